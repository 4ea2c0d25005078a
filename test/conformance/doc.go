// Package conformance checks twill's policy enforcement against an independent oracle with real
// packets. Cases come from cyclonus's generator (github.com/mattfenwick/cyclonus/pkg/generator)
// and every expected verdict from cyclonus's matcher (pkg/matcher, reached through its probe
// model), never from twill's own calculator. The runner builds cyclonus's default cluster shape
// (namespaces x, y, z with pods a, b, c, each serving TCP and UDP on ports 80 and 81), applies
// each case's actions through the API, waits for enforcement, then probes every pair of pods on
// every served port from inside the source pod through the kubelet's exec (as cyclonus does; one
// exec per source pod and step probes all of its targets at once: `twill netcheck probe`),
// and reports each probe whose result differs from the oracle's.
//
// ClusterNetworkPolicy cases (cnp.go) have their expectations written by hand from the upstream
// API's documented tier semantics (sigs.k8s.io/network-policy-api v1alpha2), since cyclonus knows
// only NetworkPolicy.
package conformance
