# Seed 001: http://localhost:3000/?name=foo starts a NameJob.
class NamesController < ApplicationController
  def create
    name = params.require(:name)
    job = NameJob.perform_later(name)
    render json: {name: name, job_id: job.job_id, grafter_id: job.provider_job_id}, status: :accepted
  end
end
