# Seed 001: waits (10 s unless NAME_JOB_SECONDS says otherwise), then logs a
# greeting. It logs its start too, so whoever kills the worker can tell the
# job is running.
class NameJob < ApplicationJob
  queue_as :default

  def perform(name)
    log "Started #{name} (Grafter job #{grafter_job_id}, attempt #{grafter_attempt})"
    sleep Float(ENV.fetch("NAME_JOB_SECONDS", "10"))
    log "Hello, #{name} (Grafter job #{grafter_job_id}, attempt #{grafter_attempt})"
  end

  private

  def log(line)
    path = ENV.fetch("NAME_JOB_LOG") { Rails.root.join("log", "name_job.log").to_s }
    FileUtils.mkdir_p(File.dirname(path))
    # One write per line, appended: two workers never interleave a line.
    File.open(path, "a") { |file| file.write("#{Time.now.utc.iso8601(3)} #{line}\n") }
    Rails.logger.info(line)
  end
end
