// Command plot draws the soak's samples as an SVG: heap (MiB), goroutines
// and open file descriptors of the client process against minutes, one
// panel each, with a tick per fault on the time axis and the baseline and
// end samples marked.
//
//	go run ./internal/bench/soak -duration 30m -json > soak.json
//	go run ./internal/bench/soak/plot -in soak.json -out soak.svg
//
// It reads the soak's JSON lines (other lines are skipped) and needs
// nothing but the standard library.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
)

// point is one sample's figures.
type point struct {
	Kind       string  `json:"kind"`
	Min        float64 `json:"min"`
	Tag        string  `json:"tag"`
	Heap       float64 `json:"heap"`
	Goroutines float64 `json:"goroutines"`
	FDs        float64 `json:"fds"`
	Start      float64 `json:"start_s"`
	Name       string  `json:"name"`
	Env        string  `json:"env"`
	Trunks     int     `json:"trunks"`
	Links      int     `json:"links"`
}

// series is what the SVG shows.
type series struct {
	samples []point
	faults  []point
	title   string
}

func main() {
	in := flag.String("in", "", "the soak's JSON lines (default stdin)")
	out := flag.String("out", "soak.svg", "the SVG to write")
	flag.Parse()
	if err := run(*in, *out); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

func run(in, out string) error {
	r := io.Reader(os.Stdin)
	if in != "" {
		f, err := os.Open(in)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	s, err := read(r)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	err = draw(f, s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// read collects the samples, the faults and the summary's description.
func read(r io.Reader) (*series, error) {
	s := &series{title: "relink soak"}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var p point
		if json.Unmarshal(sc.Bytes(), &p) != nil {
			continue
		}
		switch p.Kind {
		case "sample":
			p.Heap /= 1 << 20
			s.samples = append(s.samples, p)
		case "fault":
			s.faults = append(s.faults, p)
		case "summary":
			s.title = fmt.Sprintf("relink soak: %d trunks, %d Links, %s, %d faults", p.Trunks, p.Links, p.Env, len(s.faults))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(s.samples) < 2 {
		return nil, errors.New("fewer than two samples in the input")
	}
	return s, nil
}

const (
	width   = 900.0
	panelH  = 190.0
	left    = 80.0
	right   = 30.0
	top     = 50.0
	gap     = 40.0
	plotW   = width - left - right
	heightN = 3
)

// draw writes the SVG: three panels sharing the time axis.
func draw(w io.Writer, s *series) error {
	h := top + heightN*(panelH+gap) + 20
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", width, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="24" font-size="15">%s</text>`+"\n", left, escape(s.title))
	tmax := s.samples[len(s.samples)-1].Min
	for _, p := range s.samples {
		tmax = math.Max(tmax, p.Min)
	}
	tmax = math.Max(tmax, 1e-9)
	panels := []struct {
		name  string
		color string
		get   func(point) float64
	}{
		{"heap (MiB, after GC)", "#1f77b4", func(p point) float64 { return p.Heap }},
		{"goroutines", "#d62728", func(p point) float64 { return p.Goroutines }},
		{"open fds", "#2ca02c", func(p point) float64 { return p.FDs }},
	}
	for i, pn := range panels {
		y0 := top + float64(i)*(panelH+gap)
		panel(&b, s, y0, tmax, pn.name, pn.color, pn.get)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// panel draws one figure against minutes, its axis from 0 to about 1.2 ×
// its maximum, with a tick per fault, the base and end samples circled and
// dashed lines 5 % either side of the base.
func panel(b *strings.Builder, s *series, y0, tmax float64, name, color string, get func(point) float64) {
	vmax := 0.0
	for _, p := range s.samples {
		vmax = math.Max(vmax, get(p))
	}
	vmax = 4 * niceCeil(vmax*1.2/4) // four round steps
	x := func(t float64) float64 { return left + t/tmax*plotW }
	y := func(v float64) float64 { return y0 + panelH - v/vmax*panelH }
	fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#888"/>`+"\n", left, y0, plotW, panelH)
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", left+6, y0+16, escape(name))
	for k := 0; k <= 4; k++ {
		v := vmax * float64(k) / 4
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, label(v))
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x(tmax*float64(k)/4), y0+panelH+16, label(tmax*float64(k)/4)+" min")
	}
	for _, f := range s.faults {
		t := f.Start / 60
		fmt.Fprintf(b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ccc"><title>%s</title></line>`+"\n", x(t), x(t), y0+panelH-8, y0+panelH, escape(f.Name))
	}
	for _, p := range s.samples {
		if p.Tag != "base" {
			continue
		}
		for _, f := range []float64{0.95, 1.05} { // the ±5 % the end must stay within
			fmt.Fprintf(b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="4 4" opacity="0.6"/>`+"\n",
				left, left+plotW, y(get(p)*f), y(get(p)*f), color)
		}
	}
	var pts []string
	for _, p := range s.samples {
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.Min), y(get(p))))
	}
	fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", color, strings.Join(pts, " "))
	for _, p := range s.samples {
		r := 2.5
		if p.Tag != "" {
			r = 5
		}
		fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"><title>%.1f min %s: %s</title></circle>`+"\n",
			x(p.Min), y(get(p)), r, color, p.Min, p.Tag, label(get(p)))
	}
}

// niceCeil rounds v up to two significant digits (1 when v ≤ 0), so the
// axis ends on a round figure.
func niceCeil(v float64) float64 {
	if !(v > 0) {
		return 1
	}
	unit := math.Pow(10, math.Ceil(math.Log10(v))-2)
	return math.Ceil(v/unit) * unit
}

func label(v float64) string {
	if v >= 100 || v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
