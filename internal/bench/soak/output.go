package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// newPrinter returns the output function: JSON lines, or text.
func newPrinter(w io.Writer, asJSON bool) func(any) {
	return func(v any) {
		if asJSON {
			b, _ := json.Marshal(v)
			fmt.Fprintln(w, string(b))
			return
		}
		switch r := v.(type) {
		case *Sample:
			fmt.Fprintf(w, "sample %6.1f min %-4s heap %8.2f MiB  goroutines %6d  fds %5d  registered %d  ready %d  faults %d  load %s\n",
				r.Min, r.Tag, mib(r.Heap), r.Goroutines, r.FDs, r.Registered, r.Ready, r.Faults, r.Load)
		case *Fault:
			state := fmt.Sprintf("recovered in %.2f s", r.RecoverS)
			if !r.Recovered {
				state = fmt.Sprintf("NOT recovered: %d of %d stuck", r.Stuck, r.Units)
			}
			fmt.Fprintf(w, "fault  %3d %-18s at %7.1f s, cleared %7.1f s, %s\n", r.N, r.Name, r.Start, r.Cleared, state)
		case *Summary:
			printSummary(w, r)
		}
	}
}

func printSummary(w io.Writer, s *Summary) {
	fmt.Fprintf(w, "summary: env %s, seed %d, %.0f s, %d trunks, %d Links, %d faults (%s)\n",
		s.Env, s.Seed, s.DurationS, s.Trunks, s.Links, s.Faults, strings.Join(s.ByFault, ", "))
	if s.Base != nil && s.End != nil {
		fmt.Fprintf(w, "  heap       %8.2f MiB at %.1f min -> %8.2f MiB at %.1f min (%+.1f %%)\n",
			mib(s.Base.Heap), s.Base.Min, mib(s.End.Heap), s.End.Min, s.HeapPct)
		fmt.Fprintf(w, "  live heap  %8.2f MiB -> %8.2f MiB (%+.1f %%; HeapAlloc + StackInuse, not judged)\n",
			mib(s.Base.HeapAlloc+s.Base.StackInuse), mib(s.End.HeapAlloc+s.End.StackInuse), s.LivePct)
		fmt.Fprintf(w, "  goroutines %8d -> %8d (%+.1f %%)\n", s.Base.Goroutines, s.End.Goroutines, s.GorPct)
		fmt.Fprintf(w, "  fds        %8d -> %8d (%+.1f %%)\n", s.Base.FDs, s.End.FDs, s.FDsPct)
	}
	fmt.Fprintf(w, "  max recover %.2f s, stuck %d, orphan bindings %d, stale registered %d, false deaths %d (flow deaths %d)\n",
		s.MaxRecoverS, s.Stuck, s.Orphans, s.Stale, s.FalseDeaths, s.FlowDeaths)
	fmt.Fprintf(w, "  pass %v %s\n", s.Pass, strings.Join(s.Problems, "; "))
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
