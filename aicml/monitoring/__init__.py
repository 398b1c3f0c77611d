"""Watching served models: ground-truth labels joined to logged predictions, and the monitor's verdict on a
window of traffic (drift against the training snapshot, live metric, data quality, latency and errors)."""
