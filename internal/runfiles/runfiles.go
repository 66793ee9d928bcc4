// Package runfiles writes the small state files envd publishes under
// /run/wrenn for processes that start later or outlive an update (spec
// lifecycle.md §9): each file is replaced atomically.
package runfiles

import (
	"fmt"
	"os"
	"path/filepath"
)

// Dir is where envd publishes its state files.
const Dir = "/run/wrenn"

// Write replaces dir/name with content (no trailing newline added) through a
// temporary file and rename, creating dir (0755) if needed.
func Write(dir, name, content string, mode os.FileMode) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	tmp := f.Name()
	_, werr := f.WriteString(content)
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp, mode)
	}
	if werr == nil {
		werr = os.Rename(tmp, filepath.Join(dir, name))
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, werr)
	}
	return nil
}
