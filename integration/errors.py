"""User-facing error type: anything a user can cause by config, data, checkpoint or environment."""


class ConfigError(ValueError):
    """A setting the user can fix. The message names the key, the value, the problem and the fix."""
