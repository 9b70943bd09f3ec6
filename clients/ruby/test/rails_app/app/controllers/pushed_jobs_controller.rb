# Seed 000 (Hackler): enqueues the demo jobs of the push queue; Grafter then
# pushes each one back to this app's /grafter/jobs.
class PushedJobsController < ApplicationController
  JOBS = {"flaky" => "FlakyJob", "discarded" => "DiscardedJob", "exhausted" => "ExhaustedJob"}.freeze

  def create
    job_class = JOBS[params[:job]]
    return head :not_found unless job_class

    job = job_class.constantize.perform_later
    render json: {job_id: job.job_id, grafter_id: job.provider_job_id}, status: :accepted
  end
end
