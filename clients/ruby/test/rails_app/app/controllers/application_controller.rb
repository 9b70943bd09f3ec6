class ApplicationController < ActionController::API
  # Grafter's answer is passed on: a job that does not exist is a 404 here too.
  rescue_from Grafter::ApiError do |error|
    render json: {error: {code: error.code, message: error.message}}, status: error.status
  end

  # Grafter down: the request fails clearly instead of pretending the job exists.
  rescue_from Grafter::ConnectionError do |error|
    render json: {error: {code: "grafter_unreachable", message: error.message}}, status: :service_unavailable
  end
end
