"""Stand-ins for the BOSH toolchain the release tests need: compile, render, go-patch, monit, a /var/vcap root."""
