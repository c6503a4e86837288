"""The fields of `app.config.Settings`, grouped by the part of tuneloop they steer."""
