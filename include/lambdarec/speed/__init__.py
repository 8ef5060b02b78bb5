"""The speed layer's Python side: connector jars for the Flink job, the batching feature pusher."""
