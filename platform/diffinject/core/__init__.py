"""The bottom layer: what every other layer uses and nothing of the platform's own. Errors
(ConfigError, NonFiniteLoss), atomic writes and file locks, file integrity (SHA-256), the speed
levers of torch and diffusers (accel), the numerics rule of devices, the plotting backend and the
vocabulary of option values that configs and code share. Imports no other folder of the package."""
