package audit

import (
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// Tee returns a broker.Observer that tells each of obs, in order, about
// everything; nil observers are skipped. It is a broker.RotationObserver
// too, telling those of obs that are. With a single observer, Tee returns it
// as it is.
func Tee(obs ...broker.Observer) broker.Observer {
	var t tee
	for _, o := range obs {
		if o != nil {
			t = append(t, o)
		}
	}
	if len(t) == 1 {
		return t[0]
	}
	return t
}

type tee []broker.Observer

func (t tee) TokenServed(from broker.Source) {
	for _, o := range t {
		o.TokenServed(from)
	}
}

func (t tee) LockWaited(d time.Duration, obtained bool) {
	for _, o := range t {
		o.LockWaited(d, obtained)
	}
}

func (t tee) Refreshed(ev broker.RefreshEvent) {
	for _, o := range t {
		o.Refreshed(ev)
	}
}

func (t tee) Regressed(ev broker.RegressionEvent) {
	for _, o := range t {
		o.Regressed(ev)
	}
}

func (t tee) RotationWaited(d time.Duration) {
	for _, o := range t {
		if r, ok := o.(broker.RotationObserver); ok {
			r.RotationWaited(d)
		}
	}
}
