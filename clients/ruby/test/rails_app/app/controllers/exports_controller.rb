# Seed 002: an export too long for a request runs as a job; the page polls
# GET /exports/:id (the Grafter job's id) until it is done.
class ExportsController < ApplicationController
  FINISHED = %w[completed dead cancelled expired].freeze

  def create
    rows = Integer(params.fetch(:rows, 1000), exception: false)
    unless rows&.positive?
      return render json: {error: {code: "invalid_rows", message: "rows must be a positive integer"}},
                    status: :unprocessable_entity
    end
    job = ExportJob.perform_later(rows)
    render json: {id: job.provider_job_id, url: export_path(job.provider_job_id)}, status: :accepted
  end

  def show
    job = Grafter.client.job(params[:id])
    render json: {
      id: job["id"],
      state: job["state"],
      done: FINISHED.include?(job["state"]),
      progress: job["progress"],
      result: job["result"],
      attempt: job["attempt"]
    }
  end
end
