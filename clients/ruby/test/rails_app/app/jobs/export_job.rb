# Seed 002: writes a CSV of `rows` rows in a few steps, reporting progress
# after each, and returns where the file is: that is the job's result in
# Grafter, which GET /exports/:id shows.
class ExportJob < ApplicationJob
  queue_as :exports
  grafter_options timeout: 10.minutes, max_attempts: 3

  STEPS = 5

  def perform(rows)
    directory = ENV.fetch("EXPORT_DIR") { Rails.root.join("tmp", "exports").to_s }
    FileUtils.mkdir_p(directory)
    path = File.join(directory, "export-#{grafter_job_id}.csv")
    step_seconds = Float(ENV.fetch("EXPORT_STEP_SECONDS", "1"))
    File.open(path, "w") do |file|
      file.puts "n,square"
      written = 0
      STEPS.times do |step|
        return {"cancelled" => true, "rows" => written} if grafter_cancelled?

        upto = rows * (step + 1) / STEPS
        (written + 1..upto).each { |n| file.puts "#{n},#{n * n}" }
        written = upto
        sleep step_seconds # the slow query this stands for
        grafter_progress(written.fdiv(rows), "#{written} of #{rows} rows")
      end
    end
    {"path" => path, "rows" => rows}
  end
end
