package deploy

import (
	"fmt"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
)

// promql is the PromQL parser of the Prometheus version in go.mod, with the
// default functions, as a Prometheus server without feature flags has.
var promql = parser.NewParser(parser.Options{})

// metricRefs parses expr and returns every series selector in it.
func metricRefs(expr string) ([]metricRef, error) {
	e, err := promql.ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var refs []metricRef
	var bad error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == model.MetricNameLabel && name == "" {
				name = m.Value
			}
		}
		if name == "" {
			bad = fmt.Errorf("selector %s names no metric", vs)
		}
		refs = append(refs, metricRef{name: name, matchers: vs.LabelMatchers})
		return nil
	})
	return refs, bad
}

// checkQuery parses expr and checks every metric it names against what the
// broker exports.
func (f *facts) checkQuery(expr string) error {
	refs, err := metricRefs(expr)
	if err != nil {
		return err
	}
	if len(refs) == 0 {
		return fmt.Errorf("%q selects no metric", expr)
	}
	for _, r := range refs {
		if err := f.checkMetric(r); err != nil {
			return err
		}
	}
	return nil
}
