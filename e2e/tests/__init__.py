"""The end-to-end suites: the operator, the chart, monitoring, serving and faults on the
local cluster (the harness is the e2e package around this folder)."""
