"""The MLWorkflow API: its types (`v1alpha1`) and the CRD generated from them (`crd`)."""
