package main

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// writeSVG draws the timeline: registered trunks of each population (top)
// and the load on each registrar against its capacity (bottom), with the
// outage shaded. Hand-written SVG, no dependency.
func writeSVG(w io.Writer, o *outcome) error {
	const (
		width, height = 960, 600
		left, right   = 70, 170
		top1, h1      = 60, 220
		top2, h2      = 340, 200
	)
	s := o.Summary
	tl := o.Timeline
	tmax := math.Ceil(max(o.EndT, 1))
	pw := float64(width - left - right)
	x := func(t float64) float64 { return left + pw*t/tmax }
	nmax := float64(max(s.Trunks, 1))
	y1 := func(v float64) float64 { return top1 + h1 - h1*v/nmax }
	// The warm-up's load (capacity unlimited) would flatten the rest: the
	// scale follows the load from the freeze on, at most 5 × C; higher
	// values are drawn at the top.
	lmax := s.Capacity * 1.5
	for _, t := range tl {
		if t.Phase != "warm-up" {
			lmax = max(lmax, float64(t.Relink.Load), float64(t.Naive.Load))
		}
	}
	lmax = niceCeil(min(lmax, 5*s.Capacity))
	y2 := func(v float64) float64 { return top2 + h2 - h2*math.Min(v, lmax)/lmax }

	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(fmt.Sprintf(
		"relink vs naive sipgo, same outage: N = %d each, C = %.0f REGISTER/s, N/C = %g s, outage %g s",
		s.Trunks, s.Capacity, s.LimitS, s.OutageS)))
	// Outage band on both panels.
	for _, pan := range [][2]float64{{top1, h1}, {top2, h2}} {
		p(`<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="#f3d6d6"/>`+"\n",
			x(o.FreezeT), pan[0], x(o.RestoreT)-x(o.FreezeT), pan[1])
	}
	p(`<text x="%.1f" y="%d" fill="#a33">path silent</text>`+"\n", x(o.FreezeT)+4, top1+h1-8)
	p(`<text x="%.1f" y="%d" fill="#a33">path back →</text>`+"\n", x(o.RestoreT)+4, top1+h1-8)
	p(`<text x="%d" y="%d" fill="#777">REGISTERs received per second (the warm-up, with capacity unlimited, runs off the scale)</text>`+"\n", left, top2-8)
	p(`<text x="%d" y="%d" fill="#777">registered: live bindings at each registrar; dashed: what the trunks believe</text>`+"\n", left, top1-8)
	// Axes and grids.
	axes := func(top, h float64, ymax float64, label string, y func(float64) float64) {
		for i := 0; i <= 4; i++ {
			v := ymax * float64(i) / 4
			yy := y(v)
			p(`<line x1="%d" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, left+pw, yy, yy)
			p(`<text x="%d" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left-6, yy+4, v)
		}
		p(`<text transform="translate(16 %.0f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", top+h/2, label)
		p(`<line x1="%d" x2="%d" y1="%.0f" y2="%.0f" stroke="#333"/>`+"\n", left, left, top, top+h)
		p(`<line x1="%d" x2="%.0f" y1="%.0f" y2="%.0f" stroke="#333"/>`+"\n", left, left+pw, top+h, top+h)
	}
	axes(top1, h1, nmax, "registered trunks", y1)
	axes(top2, h2, lmax, "REGISTER/s at the registrar", y2)
	step := 5.0
	if tmax > 120 {
		step = 20
	}
	for t := 0.0; t <= tmax; t += step {
		p(`<text x="%.1f" y="%d" text-anchor="middle">%.0f</text>`+"\n", x(t), top2+h2+16, t)
	}
	p(`<text x="%.0f" y="%d" text-anchor="middle">seconds</text>`+"\n", left+pw/2, top2+h2+34)
	// Capacity line.
	p(`<line x1="%d" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#555" stroke-dasharray="6 4"/>`+"\n",
		left, left+pw, y2(s.Capacity), y2(s.Capacity))
	p(`<text x="%.0f" y="%.1f" fill="#555">capacity C</text>`+"\n", left+pw+6, y2(s.Capacity)+4)

	const relinkC, naiveC = "#1f77b4", "#d62728"
	// A population's line ends with its watch.
	line := func(vals func(tick) float64, y func(float64) float64, color, dash string, width float64) {
		var pts strings.Builder
		for _, t := range tl {
			if (color == relinkC && t.Relink.Done) || (color == naiveC && t.Naive.Done) {
				continue
			}
			fmt.Fprintf(&pts, "%.1f,%.1f ", x(t.T), y(vals(t)))
		}
		if pts.Len() == 0 {
			return
		}
		p(`<polyline fill="none" stroke="%s" stroke-width="%.1f" stroke-dasharray="%s" points="%s"/>`+"\n",
			color, width, dash, strings.TrimSpace(pts.String()))
	}
	line(func(t tick) float64 { return float64(t.Relink.Registered) }, y1, relinkC, "none", 2.5)
	line(func(t tick) float64 { return float64(t.Naive.Registered) }, y1, naiveC, "none", 2.5)
	line(func(t tick) float64 { return float64(t.Naive.Believed) }, y1, naiveC, "3 3", 1.2)
	line(func(t tick) float64 { return float64(t.Relink.Believed) }, y1, relinkC, "3 3", 1.2)
	line(func(t tick) float64 { return float64(t.Relink.Load) }, y2, relinkC, "none", 2)
	line(func(t tick) float64 { return float64(t.Naive.Load) }, y2, naiveC, "none", 2)
	line(func(t tick) float64 { return float64(t.Relink.Rejected) }, y2, relinkC, "2 3", 1.2)
	line(func(t tick) float64 { return float64(t.Naive.Rejected) }, y2, naiveC, "2 3", 1.2)

	legend := []struct{ color, dash, text string }{
		{relinkC, "none", "relink: registered"},
		{naiveC, "none", "naive: registered"},
		{relinkC, "3 3", "relink: believes it is"},
		{naiveC, "3 3", "naive: believes it is"},
		{relinkC, "2 3", "503s (dotted)"},
	}
	for i, l := range legend {
		yy := top1 + 20 + 20*i
		p(`<line x1="%.0f" x2="%.0f" y1="%d" y2="%d" stroke="%s" stroke-width="2" stroke-dasharray="%s"/>`+"\n",
			left+pw+8, left+pw+30, yy, yy, l.color, l.dash)
		p(`<text x="%.0f" y="%d">%s</text>`+"\n", left+pw+34, yy+4, html.EscapeString(l.text))
	}
	p("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= v {
			return m * e
		}
	}
	return 10 * e
}
