// Package deploy holds the checks of tokenbroker's deployment files, in a
// module of its own so that the broker's module does not depend on
// Kubernetes, Prometheus or Compose code. `make deploy-check` (part of
// `make test`) runs them:
//
//   - deploy/k8s renders with kustomize (its Go API, pinned in go.mod) and
//     every object decodes strictly into its Kubernetes type (the
//     ServiceMonitor into the Prometheus Operator's);
//   - deploy/prometheus/alerts.yaml parses and validates with Prometheus'
//     rule parser, and names only metrics the broker exports;
//   - deploy/grafana/tokenbroker.json parses, and every query is PromQL that
//     names only metrics the broker exports;
//   - deploy/compose.yaml loads with the Compose specification's loader and
//     names only images, build targets and broker flags that exist;
//   - deploy/Dockerfile has the targets, the static build and the non-root
//     user the others rely on.
//
// "Flags and metrics that exist" come from the real code, not a copy: the
// checks build cmd/broker and cmd/client-demo from the parent module, read
// their --help, and start a dev-mode broker on 127.0.0.1 to read /metrics.
package deploy
