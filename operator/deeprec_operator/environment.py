"""The operator's own settings from its environment (the chart sets them), named once."""

#: Seconds after which a model nothing else synced is synced again (status refresh, lost events).
POLL_SECONDS_ENV = "DEEPREC_OPERATOR_POLL_SECONDS"
#: The runtime image for models without spec.image (the `--runtime-image` flag's default).
RUNTIME_IMAGE_ENV = "DEEPREC_RUNTIME_IMAGE"
#: Where the operator's own pods run (the chart sets both): the NetworkPolicies it writes admit
#: them, so the status probe still reaches the runtimes.
OPERATOR_NAMESPACE_ENV = "DEEPREC_OPERATOR_NAMESPACE"
OPERATOR_POD_LABELS_ENV = "DEEPREC_OPERATOR_POD_LABELS"
