"""The web console at /console: a page (plain HTML, JS and CSS, no build step) that shows an
account's jobs, models and deployments per region, read through the Bedrock API itself."""
