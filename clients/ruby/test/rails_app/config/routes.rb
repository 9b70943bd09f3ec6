Rails.application.routes.draw do
  # Seed 001: GET /?name=foo enqueues a NameJob.
  root "names#create"

  # Seed 002: start an export, then poll it until it is done.
  resources :exports, only: [:create, :show]

  # Seed 000 (Hackler): no worker process; Grafter pushes the jobs of a push
  # queue to this endpoint and the job runs inside the request.
  post "/pushed/:job", to: "pushed_jobs#create"
  if ENV["GRAFTER_PUSH_SECRET"]
    mount Grafter::Rack::PushEndpoint.new(secret: ENV["GRAFTER_PUSH_SECRET"]) => "/grafter/jobs"
  end
end
