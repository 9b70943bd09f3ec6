# Sent for every signup that committed: it reads the signup row, which the
# job can only exist alongside, and logs a welcome.
class WelcomeJob < ActiveJob::Base
  queue_as :default

  def perform(signup_id)
    signup = Signup.find(signup_id)
    path = ENV.fetch("WELCOME_LOG") { Rails.root.join("log", "welcome.log").to_s }
    FileUtils.mkdir_p(File.dirname(path))
    File.open(path, "a") { |file| file.write("Welcome #{signup.email} (Grafter job #{grafter_job_id})\n") }
    {"email" => signup.email}
  end
end
