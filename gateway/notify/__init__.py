"""Alert notifications that reach people: e-mail, Telegram and SMS (docs/alerts.md).

- ``rules``: who wants which alert and when it may go out (quiet hours, hourly limits,
  de-duplication, flapping summaries) — pure functions;
- ``messages``: short texts in Spanish or English per alert kind, SMS-safe;
- ``channels``: SMTP, Telegram Bot API, gammu-smsd spool;
- ``service``: ``NotificationService`` (``enqueue(notice)``, ``start``/``stop``) on the
  webhooks' durable delivery queue; ``notification_service(settings)`` builds it.
"""
