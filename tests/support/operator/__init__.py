"""The operator's test doubles and inputs: an in-memory API client, prober, Events sink and clock
(fakes.py), the fault-injecting API client wrapper the e2e fault tests run the operator with
(faulty_kube.py), test-time certificates (pki.py), and the manifests the tests read: a base
DeepRecModel spec, the CRD, the chart and the examples (manifests.py)."""
