# Jobs are enqueued on the app's own database connection, through the SQL
# function Grafter's PostgreSQL migrations install: a job enqueued inside a
# transaction exists only if the transaction commits. The worker still talks
# to the Grafter server over HTTP (GRAFTER_URL).
Grafter.configure do |config|
  config.enqueuer = Grafter::SqlEnqueuer.new(ActiveRecord::Base, schema: ENV.fetch("GRAFTER_SCHEMA", "grafter"))
end
