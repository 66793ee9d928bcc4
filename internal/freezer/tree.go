package freezer

import (
	"path"
	"strings"
)

// tree is the cgroup hierarchy under the cgroup root as the freezer sees
// it: paths are relative to the root ("" is the root itself, "a/b" a
// descendant). The kernel's cgroupfs implements it (kernelTree); unit tests
// use a fake.
type tree interface {
	// children lists the child cgroups of rel in ascending byte order, at
	// most limit of them (the smallest names); more reports that there were
	// others. A missing rel is an error for which isNotExist holds.
	children(rel string, limit int) (names []string, more bool, err error)
	// ownRequest reads rel's cgroup.freeze.
	ownRequest(rel string) (bool, error)
	// request writes rel's cgroup.freeze (never creating the file).
	request(rel string, freeze bool) error
	// settled reads the frozen key of rel's cgroup.events (absent: false).
	settled(rel string) (bool, error)
}

// The static groups (lifecycle.md §6.1), which every freeze covers.
const (
	userGroup = "user"
	ptyGroup  = "ptys"
)

func staticGroups() []string { return []string{userGroup, ptyGroup} }

func isStatic(rel string) bool { return rel == userGroup || rel == ptyGroup }

// Allowlist is the liveness allowlist of control-plane.md §2.2: paths
// relative to the cgroup root that a hierarchy sweep never freezes. They are
// E2B's names (systemd, its journal, the NFSv3 lock helpers, socat
// forwarders), kept unchanged so that the allowlisted counts mean what
// E2B's mean.
func Allowlist() []string {
	return []string{
		"init.scope",
		"system.slice/systemd-journald.service",
		"system.slice/rpcbind.service",
		"system.slice/rpcbind.socket",
		"system.slice/rpc-statd.service",
		"socats",
	}
}

func allowlisted(rel string) bool {
	for _, a := range Allowlist() {
		if rel == a || strings.HasPrefix(rel, a+"/") {
			return true
		}
	}
	return false
}

// descendSet is envd's chain (chain, from the root down) followed by the
// chain of the parent of every allowlist entry, without duplicates, in that
// order (control-plane.md §2.3). Its members are never frozen themselves;
// their children are the candidates of a hierarchy sweep.
func descendSet(chain []string) []string {
	seen := map[string]bool{}
	var out []string
	add := func(rel string) {
		if !seen[rel] {
			seen[rel] = true
			out = append(out, rel)
		}
	}
	for _, c := range chain {
		add(c)
	}
	for _, a := range Allowlist() {
		for _, c := range chainOf(parentOf(a)) {
			add(c)
		}
	}
	return out
}

// chainOf is "" followed by every prefix of rel: "a/b" → "", "a", "a/b".
func chainOf(rel string) []string {
	out := []string{""}
	if rel == "" {
		return out
	}
	parts := strings.Split(rel, "/")
	for i := range parts {
		out = append(out, strings.Join(parts[:i+1], "/"))
	}
	return out
}

func parentOf(rel string) string {
	d := path.Dir(rel)
	if d == "." || d == "/" {
		return ""
	}
	return d
}

func join(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "/" + name
}

// walk visits the hierarchy breadth-first from the root, children in
// ascending byte order, at most bound cgroups (the root included); visit is
// called for each and returns whether to list its children. It reports how
// many it visited and whether the bound cut the walk short. Listing errors
// go to listErr (nil: ignored), a missing cgroup is skipped silently.
//
// Memory stays bounded by the bound however many cgroups the guest made:
// a listing keeps only the names that can still be visited, and a queue
// never holds more than that.
func walk(t tree, bound int, visit func(rel string) bool, listErr func(rel string, err error)) (visited int, truncated bool) {
	queue := []string{""}
	for len(queue) > 0 {
		if visited >= bound {
			return visited, true
		}
		rel := queue[0]
		queue = queue[1:]
		visited++
		if !visit(rel) {
			continue
		}
		room := bound - visited - len(queue)
		if room <= 0 {
			// Nothing listed here could be visited; if rel has children the
			// walk is incomplete.
			names, _, err := t.children(rel, 1)
			if err == nil && len(names) > 0 {
				truncated = true
			} else if err != nil && !isNotExist(err) && listErr != nil {
				listErr(rel, err)
			}
			continue
		}
		names, more, err := t.children(rel, room)
		if err != nil {
			if !isNotExist(err) && listErr != nil {
				listErr(rel, err)
			}
			continue
		}
		if more {
			truncated = true
		}
		for _, n := range names {
			queue = append(queue, join(rel, n))
		}
	}
	return visited, truncated
}
