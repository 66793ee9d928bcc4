package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/envd/envd/client"
)

// progressMin is the transfer size from which a progress bar is worth
// drawing; smaller copies finish before a human could read it.
const progressMin = 1 << 20

// progress draws a one-line progress bar for cp on a terminal. It is
// driven from the single goroutine doing the transfer.
type progress struct {
	w       io.Writer
	enabled bool
	total   int64 // -1: unknown
	done    int64 // bytes of completed files
	cur     int64 // bytes of the file in flight
	label   string
	start   time.Time
	last    time.Time
	drawn   bool
}

// newProgress draws only when stdout is a terminal and output is for
// humans.
func (a *app) newProgress(quiet bool) *progress {
	return &progress{w: a.stdout, enabled: !quiet && !a.json && isTerminal(a.stdoutFile), total: -1, start: time.Now()}
}

func (p *progress) setTotal(n int64) { p.total = n }

// file returns the client callback for one file's transfer.
func (p *progress) file(label string) client.Progress {
	if !p.enabled {
		return nil
	}
	return func(done, _ int64) {
		p.label = label
		p.cur = done
		if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond {
			p.last = now
			p.draw()
		}
	}
}

func (p *progress) fileDone(n int64) {
	p.done += n
	p.cur = 0
}

func (p *progress) draw() {
	n := p.done + p.cur
	if p.total >= 0 && p.total < progressMin || p.total < 0 && n < progressMin {
		return
	}
	p.drawn = true
	elapsed := time.Since(p.start).Seconds()
	rate := ""
	if elapsed > 0 {
		rate = humanBytes(int64(float64(n)/elapsed)) + "/s"
	}
	label := p.label
	if len(label) > 24 {
		label = "…" + label[len(label)-23:]
	}
	if p.total > 0 {
		frac := float64(n) / float64(p.total)
		if frac > 1 {
			frac = 1
		}
		const width = 24
		full := int(frac * width)
		bar := strings.Repeat("=", full) + strings.Repeat(" ", width-full)
		if full < width {
			bar = bar[:full] + ">" + bar[full+1:]
		}
		fmt.Fprintf(p.w, "\r%-24s [%s] %3.0f%% %10s / %-10s %12s\x1b[K", label, bar, frac*100, humanBytes(n), humanBytes(p.total), rate)
		return
	}
	fmt.Fprintf(p.w, "\r%-24s %10s %12s\x1b[K", label, humanBytes(n), rate)
}

// finish draws the final state and ends the line.
func (p *progress) finish() {
	if !p.enabled {
		return
	}
	p.draw()
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}
