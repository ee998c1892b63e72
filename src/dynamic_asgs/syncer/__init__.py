"""policy-server-asg-syncer: Cloud Controller -> policy DB."""
