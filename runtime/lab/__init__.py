"""The demo, test and benchmark harness: worker bundles and containers at the runc level
(runc_lab, bundles), a private containerd with CRI pods (containerd_lab), locally built OCI images
(oci_image), and `rewarm demo`. Nothing in the engine imports it."""
