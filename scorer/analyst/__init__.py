"""The analyst loop, served in the scorer process beside the anomaly history.

- incidents: alerts from the anomalies topic grouped into incidents, kept durably, listed and watched
  (IncidentService);
- summaries: each incident version in plain words through an OpenAI-compatible LLM, or a deterministic
  summary built from the evidence;
- feedback: analyst labels kept in the logmesh.feedback topic (FeedbackService), suppressions applied at once;
- notifications: incidents and alerts to webhooks (Alertmanager, Slack).
"""
