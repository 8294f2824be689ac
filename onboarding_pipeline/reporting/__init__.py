"""Weekly report and its delivery to Slack and email."""
