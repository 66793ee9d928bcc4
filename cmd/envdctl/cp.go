package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/envd/envd/client"
)

var cmdCp = &command{
	name:    "cp",
	args:    "SOURCE DESTINATION",
	summary: "copy files and directory trees to or from the guest (guest paths are :PATH; - is stdin/stdout)",
	flags: func(fs *flag.FlagSet, o *cmdOpts) {
		fs.BoolVar(&o.gzip, "z", false, "compress the transfer with gzip")
		fs.BoolVar(&o.quiet, "q", false, "no progress bar")
	},
	run: runCp,
}

// cpStats is what a copy did (--json output).
type cpStats struct {
	Files   int      `json:"files"`
	Dirs    int      `json:"dirs"`
	Bytes   int64    `json:"bytes"`
	Skipped []string `json:"skipped"`
	// Warnings are problems that did not stop the copy.
	Warnings []string `json:"warnings,omitempty"`

	chmod map[fs.FileMode][]string // uploaded files that need their mode set
}

func runCp(a *app, o *cmdOpts, args []string) error {
	if err := needArgs(args, 2, 2); err != nil {
		return err
	}
	src, srcRemote := remotePath(args[0])
	dst, dstRemote := remotePath(args[1])
	if srcRemote == dstRemote {
		return usagef("cp: exactly one of SOURCE and DESTINATION must be a guest path written :PATH")
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	st := &cpStats{Skipped: []string{}}
	bar := a.newProgress(o.quiet)
	if dstRemote {
		err = a.cpUp(ctx, c, src, dst, o, st, bar)
	} else {
		err = a.cpDown(ctx, c, src, dst, o, st, bar)
	}
	bar.finish()
	if err != nil {
		return err
	}
	if a.json {
		return a.printJSON(st)
	}
	return nil
}

// skip reports an entry that cp does not copy.
func (a *app) skip(st *cpStats, p, why string) {
	st.Skipped = append(st.Skipped, p)
	if !a.json {
		fmt.Fprintf(a.stderr, "envdctl: cp: skipping %s: %s\n", p, why)
	}
}

// cpUp copies the local src (a file, a directory tree, or "-" for stdin)
// to the guest path dst.
func (a *app) cpUp(ctx context.Context, c *client.Client, src, dst string, o *cmdOpts, st *cpStats, bar *progress) error {
	if src == "-" {
		if dst == "" || strings.HasSuffix(dst, "/") {
			return usagef("cp: copying stdin needs a file name as DESTINATION")
		}
		return a.uploadFile(ctx, c, a.stdin, -1, envdFileMode, "stdin", dst, o, st, bar)
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	// Like cp: into an existing directory, else to that name.
	target := dst
	intoDir := dst == "" || strings.HasSuffix(dst, "/")
	if !intoDir {
		e, err := c.Stat(ctx, dst)
		switch {
		case err == nil:
			intoDir = e.IsDir()
		case !client.IsNotFound(err):
			return err
		}
	}
	if intoDir {
		target = path.Join(dst, filepath.Base(filepath.Clean(src)))
	}
	if !fi.IsDir() {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("cp: %s is not a regular file or directory", src)
		}
		bar.setTotal(fi.Size())
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := a.uploadFile(ctx, c, f, fi.Size(), fi.Mode().Perm(), src, target, o, st, bar); err != nil {
			return err
		}
		a.applyModes(ctx, c, st)
		return nil
	}

	// A tree: sum the sizes first for the progress bar.
	var total int64
	_ = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				total += fi.Size()
			}
		}
		return nil
	})
	bar.setTotal(total)
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		rt := path.Join(target, filepath.ToSlash(rel))
		if d.IsDir() {
			if _, err := c.MakeDir(ctx, rt); err != nil && !client.IsAlreadyExists(err) {
				return err
			}
			st.Dirs++
			return nil
		}
		fi, err := os.Stat(p) // follows a link to a file
		if err != nil {
			a.skip(st, p, "broken symbolic link")
			return nil
		}
		if !fi.Mode().IsRegular() {
			why := "not a regular file"
			if d.Type()&fs.ModeSymlink != 0 {
				why = "symbolic link to a directory"
			}
			a.skip(st, p, why)
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		return a.uploadFile(ctx, c, f, fi.Size(), fi.Mode().Perm(), p, rt, o, st, bar)
	})
	if err != nil {
		return err
	}
	a.applyModes(ctx, c, st)
	return nil
}

// envdFileMode is the mode envd gives a file it creates by upload.
const envdFileMode fs.FileMode = 0o644

// chmodBatch bounds the paths of one remote chmod command line.
const chmodBatch = 200

// applyModes gives uploaded files their local permission bits, as cp does:
// envd creates files 0644, so executables need a chmod in the guest, run
// as the same user that owns them. The content is in place whatever
// happens here, so a failure (no chmod in the image, a parent directory
// the user cannot search) is a warning, not an error.
func (a *app) applyModes(ctx context.Context, c *client.Client, st *cpStats) {
	if err := setModes(ctx, c, st); err != nil {
		st.Warnings = append(st.Warnings, err.Error())
		if !a.json {
			fmt.Fprintf(a.stderr, "envdctl: warning: %s\n", oneLine(err.Error()))
		}
	}
}

func setModes(ctx context.Context, c *client.Client, st *cpStats) error {
	modes := make([]fs.FileMode, 0, len(st.chmod))
	for m := range st.chmod {
		modes = append(modes, m)
	}
	sort.Slice(modes, func(i, j int) bool { return modes[i] < modes[j] })
	for _, m := range modes {
		paths := st.chmod[m]
		for len(paths) > 0 {
			n := min(len(paths), chmodBatch)
			args := append([]string{fmt.Sprintf("%04o", uint32(m)), "--"}, paths[:n]...)
			res, err := c.Run(ctx, "chmod", args)
			if err != nil {
				return fmt.Errorf("cp: setting file modes: %s", errorText(err))
			}
			if !res.Success() {
				return fmt.Errorf("cp: setting file modes: chmod: %s", strings.TrimSpace(string(res.Stderr)))
			}
			paths = paths[n:]
		}
	}
	return nil
}

func (a *app) uploadFile(ctx context.Context, c *client.Client, r io.Reader, size int64, mode fs.FileMode, label, target string, o *cmdOpts, st *cpStats, bar *progress) error {
	opts := &client.UploadOptions{Gzip: o.gzip, Progress: bar.file(label)}
	if size > 0 {
		opts.Size = size
	}
	cr := &countReader{r: r}
	w, err := c.Upload(ctx, target, cr, opts)
	if err != nil {
		return err
	}
	if mode != envdFileMode {
		if st.chmod == nil {
			st.chmod = map[fs.FileMode][]string{}
		}
		st.chmod[mode] = append(st.chmod[mode], w.Path)
	}
	bar.fileDone(cr.n)
	st.Files++
	st.Bytes += cr.n
	return nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// cpDown copies the guest path src (a file or a directory tree) to the
// local dst ("-" for stdout).
func (a *app) cpDown(ctx context.Context, c *client.Client, src, dst string, o *cmdOpts, st *cpStats, bar *progress) error {
	e, err := c.Stat(ctx, src)
	if err != nil {
		return err
	}
	if dst == "-" {
		if e.IsDir() {
			return usagef("cp: cannot write a directory to stdout")
		}
		n, err := c.Download(ctx, src, a.stdout, &client.DownloadOptions{Gzip: o.gzip})
		st.Files, st.Bytes = 1, n
		return err
	}
	target := dst
	if fi, err := os.Stat(dst); (err == nil && fi.IsDir()) || strings.HasSuffix(dst, "/") {
		target = filepath.Join(dst, e.Name)
	}
	if !e.IsDir() {
		if e.Type != client.FileTypeFile {
			return fmt.Errorf("cp: %s is not a regular file or directory", e.Path)
		}
		bar.setTotal(e.Size)
		return a.downloadFile(ctx, c, e, e.Path, target, o, st, bar)
	}

	entries, err := c.ListDir(ctx, src, math.MaxInt32)
	if err != nil {
		return err
	}
	var total int64
	for _, x := range entries {
		if x.Type == client.FileTypeFile && !x.Symlink {
			total += x.Size
		}
	}
	bar.setTotal(total)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	st.Dirs++
	for i := range entries {
		x := &entries[i]
		rel, err := filepath.Rel(e.Path, x.Path)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
			return fmt.Errorf("cp: unexpected entry %s outside %s", x.Path, e.Path)
		}
		lt := filepath.Join(target, rel)
		switch {
		case x.IsDir() && x.Symlink:
			a.skip(st, x.Path, "symbolic link to a directory")
		case x.IsDir():
			if err := os.MkdirAll(lt, 0o755); err != nil {
				return err
			}
			st.Dirs++
		case x.Type == client.FileTypeFile:
			if err := a.downloadFile(ctx, c, x, x.Path, lt, o, st, bar); err != nil {
				return err
			}
		default:
			a.skip(st, x.Path, "not a regular file")
		}
	}
	return nil
}

// downloadFile writes the guest file at src to the local target through a
// temporary file, so a failed copy leaves no partial file; the permission
// bits follow the guest file's.
func (a *app) downloadFile(ctx context.Context, c *client.Client, e *client.EntryInfo, src, target string, o *cmdOpts, st *cpStats, bar *progress) (err error) {
	f, err := os.CreateTemp(filepath.Dir(target), ".envdctl-tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	n, err := c.Download(ctx, src, f, &client.DownloadOptions{Gzip: o.gzip, Progress: bar.file(src)})
	if err != nil {
		return err
	}
	if err := f.Chmod(e.Mode.Perm()); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), target); err != nil {
		var le *os.LinkError
		if errors.As(err, &le) {
			return fmt.Errorf("cp: %s: %w", target, le.Err)
		}
		return err
	}
	bar.fileDone(n)
	st.Files++
	st.Bytes += n
	return nil
}
