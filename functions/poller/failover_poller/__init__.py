"""The poller function: watches an EM's cloud failover sessions and notifies on their end.

`handler` is the Lambda entry point; `service` decides what a change of session state
means; `state_store`, `channels` and `em_source` are the adapters to DynamoDB, SNS and
EventBridge, and EM; `notifications` renders what people and systems receive.
"""
