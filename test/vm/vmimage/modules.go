package vmimage

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// Module is one kernel module file.
type Module struct {
	Name string // canonical name: dashes become underscores, as the kernel does
	Path string
}

// ModuleName is the kernel's canonical form of a module name.
func ModuleName(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(s), ".ko"), "-", "_")
}

// ModuleDepends reads the "depends=" list from a module's .modinfo section
// (the information depmod uses; no modules.dep is shipped in the package,
// it is generated at install time).
func ModuleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("%s: read .modinfo: %w", path, err)
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			for _, d := range strings.Split(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, ModuleName(d))
				}
			}
		}
	}
	return deps, nil
}

// ModuleClosure finds the wanted modules under modDir (a lib/modules/<release>
// tree) and every module they depend on, and returns them in an order in
// which each module comes after its dependencies. A wanted module that does
// not exist as a file (because the kernel has it built in) is an error, so
// the list stays honest.
func ModuleClosure(modDir string, wanted []string) ([]Module, error) {
	paths := map[string]string{}
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			paths[ModuleName(p)] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list modules in %s: %w", modDir, err)
	}
	var order []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		p, ok := paths[name]
		if !ok {
			return fmt.Errorf("module %s (needed by %v) not found under %s", name, chain, modDir)
		}
		state[name] = 1
		deps, err := ModuleDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, Module{Name: name, Path: p})
		return nil
	}
	for _, w := range wanted {
		if err := visit(ModuleName(w), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
