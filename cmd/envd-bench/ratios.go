package main

import (
	"math"
	"strings"
)

// ratioDef is one ratio of a daemon's figure to a machine baseline of the
// same run (issue 12's table), with its goal.
type ratioDef struct {
	name string // printed as <label>/ratio_<name>
	num  string // the daemon's figure, without its label
	den  string // the machine baseline, with "machine/"
	goal string // for the reader: "<= 1.8", ">= 0.6"
}

func ratioDefs(sz sizes) []ratioDef {
	return []ratioDef{
		{"exec_p50_vs_fork_exec_p50", sz.execP50(), sz.mForkExecP50(), "<= 1.8"},
		{"exec_parallel_vs_fork_exec_parallel", sz.execParallel(), sz.mForkExecParallel(), ">= 0.6"},
		{"stdout_json_vs_base64_encode", sz.streamJSON(), sz.mBase64(), ">= 0.45"},
		{"stdout_binary_vs_pipe", sz.stream(), sz.mPipe(), ">= 0.4"},
		{"concurrent_json_vs_pipes", sz.concurrentJSON(), sz.mConcurrent(), "<= 1.5"},
		{"listdir_vs_readdir_lstat", sz.listDir(), sz.mReaddir(), "<= 2"},
		{"upload_vs_file_write", sz.upload(), sz.mFileWrite(), ">= 0.8"},
		{"download_vs_loopback_tcp", sz.download(), sz.mLoopback(), ">= 0.9"},
	}
}

// absoluteGoals are the goals of the figures that are not ratios (issue 12).
func absoluteGoals() []string {
	return []string{
		"envd/rss_after_run <= 20 MB (20000 KiB)",
		"envd/rss_idle <= 9 MB (9000 KiB)",
		"envd/binary_size <= 9 MB (9000000 bytes)",
	}
}

// ratios computes label's ratios from the figures of the run. A ratio
// whose figures are missing, not finite or whose baseline is not positive
// is left out (the run reported why its figure is missing).
func ratios(figs map[string]float64, label string, defs []ratioDef) []figure {
	var out []figure
	for _, d := range defs {
		num, ok1 := figs[label+"/"+d.num]
		den, ok2 := figs[d.den]
		if !ok1 || !ok2 || !finite(num) || !finite(den) || den <= 0 {
			continue
		}
		out = append(out, figure{name: label + "/ratio_" + d.name, value: num / den, unit: "x"})
	}
	return out
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// printRatios ends the run with every daemon's ratios and the goals.
func printRatios(rep *reporter, labels []string, sz sizes) {
	defs := ratioDefs(sz)
	var goals []string
	for _, d := range defs {
		goals = append(goals, "ratio_"+d.name+" "+d.goal)
	}
	rep.comment("ratios against the machine baselines of this run; goals: %s", strings.Join(goals, ", "))
	rep.comment("other goals: %s", strings.Join(absoluteGoals(), ", "))
	figs := rep.values()
	for _, l := range labels {
		for _, f := range ratios(figs, l, defs) {
			rep.add(f.name, f.value, f.unit)
		}
	}
}
