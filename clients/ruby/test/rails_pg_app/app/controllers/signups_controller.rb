# POST /signups?email=… stores a signup and enqueues its WelcomeJob in one
# transaction. With `reject=1` the transaction fails after the enqueue (as a
# later validation would): the signup and the job are both rolled back.
class SignupsController < ActionController::API
  class Rejected < StandardError; end

  def create
    signup_id = job = nil
    Signup.transaction do
      signup_id = Signup.create!(email: params.require(:email)).id
      job = WelcomeJob.perform_later(signup_id)
      raise Rejected, "signup #{signup_id} rejected after its job was enqueued" if params[:reject]
    end
    render json: {signup_id: signup_id, grafter_id: job.provider_job_id}, status: :created
  rescue Rejected => e
    # The ids the rolled-back rows had, so a caller can see they are gone.
    render json: {error: e.message, signup_id: signup_id, grafter_id: job.provider_job_id},
           status: :unprocessable_entity
  end
end
