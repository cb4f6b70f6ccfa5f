package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// Progress intervals: on a terminal the line is rewritten in place.
const (
	ttyProgressEvery     = 250 * time.Millisecond
	defaultProgressEvery = 2 * time.Second
)

// progress writes a live progress line while the load runs.
type progress struct {
	w     io.Writer
	tty   bool
	start time.Time
	t     *tally
	idp   *fakeidp.Server

	quit chan struct{} // closed by stop
	done chan struct{} // closed when the goroutine returned

	mu   sync.Mutex // serializes writes to w
	last int        // length of the last line written in place
}

// startProgress starts writing progress lines to w: rewritten in place every
// ttyProgressEvery when w is a terminal, else one line every every (or
// defaultProgressEvery when every is zero).
func startProgress(w io.Writer, every time.Duration, start time.Time, t *tally, idp *fakeidp.Server) *progress {
	p := &progress{w: w, tty: isTerminal(w), start: start, t: t, idp: idp,
		quit: make(chan struct{}), done: make(chan struct{})}
	switch {
	case p.tty:
		every = ttyProgressEvery
	case every <= 0:
		every = defaultProgressEvery
	}
	go p.loop(every)
	return p
}

func (p *progress) loop(every time.Duration) {
	defer close(p.done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			p.write(p.line())
		case <-p.quit:
			if p.tty {
				p.write(p.line())
				p.mu.Lock()
				fmt.Fprintln(p.w)
				p.mu.Unlock()
			}
			return
		}
	}
}

// stop writes the last line (on a terminal) and waits for the goroutine.
func (p *progress) stop() {
	close(p.quit)
	<-p.done
}

func (p *progress) line() string {
	st := p.idp.Stats()
	return fmt.Sprintf("%6.1fs  requests %d  failed %d  recovered_401 %d  idp_refreshes %d  reuses %d",
		time.Since(p.start).Seconds(), p.t.requests.Load(), p.t.failed.Load(), p.t.recovered.Load(),
		st.RefreshRequests, st.Reuses)
}

// note writes a line of its own between the progress lines.
func (p *progress) note(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.last > 0 {
		fmt.Fprint(p.w, "\r"+strings.Repeat(" ", p.last)+"\r")
		p.last = 0
	}
	fmt.Fprintln(p.w, line)
}

func (p *progress) write(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.tty {
		fmt.Fprintln(p.w, line)
		return
	}
	pad := ""
	if n := p.last - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	p.last = len(line)
	fmt.Fprint(p.w, "\r"+line+pad)
}

// isTerminal reports whether w is a character device, such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
