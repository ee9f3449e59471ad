"""One error tree for the whole project.

Each class also subclasses the builtin it means (as gpiozero does), so callers may catch either.
Messages are one line and say what is wrong and where.
"""


class CacaoDryerError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(CacaoDryerError, ValueError):
    """A configuration file or value is invalid (message names the file and key)."""


class PayloadError(CacaoDryerError, ValueError):
    """An MQTT payload does not match the message contract (message names topic and field)."""


class TopicError(CacaoDryerError, ValueError):
    """An MQTT topic is not one of the contract's topics."""


class SensorError(CacaoDryerError, RuntimeError):
    """A sensor could not give a trustworthy reading (transient or persistent)."""


class SensorFault(SensorError):
    """A sensor failed repeatedly and is now reported as faulty."""


class ActuatorError(CacaoDryerError, RuntimeError):
    """A fan or vent could not be driven."""


class OutboxError(CacaoDryerError, OSError):
    """The node's on-disk queue of unsent messages could not be read or written."""


class NotFoundError(CacaoDryerError, LookupError):
    """The site, node, batch, alert or profile asked for does not exist (message names it)."""


class ConflictError(CacaoDryerError, RuntimeError):
    """The request contradicts the current state (a batch already running, an alert already
    closed); the message says which state."""
