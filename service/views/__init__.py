"""The JSON documents the service shows for a task (status, run summary, detail): one module
per shape, so the API, websockets, webhooks and logs all show the same one."""
