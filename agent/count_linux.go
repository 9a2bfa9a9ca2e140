package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
)

// getdentsBuf is the buffer of one getdents64 call (reused across a directory tree).
const getdentsBuf = 32 << 10

// countFiles counts regular files under dir, recursing into subdirectories, with getdents64
// directly: the entry type comes with the name, so there is no stat and no allocation per
// entry (os.File.ReadDir allocates a DirEntry and a name for each: ~13 MB for 100,000
// messages). Entries of unknown type (file systems without d_type) are lstat'ed. A
// subdirectory that vanishes while counting is skipped; dir itself must exist.
func countFiles(ctx context.Context, dir string, depth int) (int64, error) {
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0) // may be a symlink
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer syscall.Close(fd)
	buf := make([]byte, getdentsBuf)
	n, err := countDirents(ctx, fd, dir, depth, buf)
	if err != nil {
		return 0, err
	}
	return n, nil
}

// openDir opens a subdirectory of at; a symlink put there meanwhile is refused (ELOOP).
func openDir(at int, name string) (int, error) {
	for {
		fd, err := syscall.Openat(at, name, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// countDirents counts under the open directory fd (named path, for errors). buf is shared
// down the recursion: each level finishes with its contents before descending.
func countDirents(ctx context.Context, fd int, path string, depth int, buf []byte) (int64, error) {
	if depth > maxHashDepth {
		return 0, fmt.Errorf("%s: nested deeper than %d levels", path, maxHashDepth)
	}
	var n int64
	var subdirs []string // visited after this directory's listing, so buf can be reused
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		m, err := syscall.Getdents(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, &os.PathError{Op: "getdents", Path: path, Err: err}
		}
		if m <= 0 {
			break
		}
		for off := 0; off < m; {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name NUL-terminated.
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			if reclen < 20 || off+reclen > m {
				return 0, fmt.Errorf("%s: malformed directory entry", path)
			}
			typ, name := buf[off+18], buf[off+19:off+reclen]
			off += reclen
			if name[0] == '.' && (name[1] == 0 || name[1] == '.' && name[2] == 0) {
				continue
			}
			if typ == syscall.DT_UNKNOWN {
				typ = lstatType(path + "/" + cString(name))
			}
			switch typ {
			case syscall.DT_REG:
				n++
			case syscall.DT_DIR:
				subdirs = append(subdirs, cString(name))
			}
		}
	}
	for _, name := range subdirs {
		sub := path + "/" + name
		cfd, err := openDir(fd, name)
		if errors.Is(err, syscall.ENOENT) {
			continue // removed meanwhile
		}
		if err != nil {
			return 0, &os.PathError{Op: "open", Path: sub, Err: err}
		}
		c, err := countDirents(ctx, cfd, sub, depth+1, buf)
		syscall.Close(cfd)
		if err != nil {
			return 0, err
		}
		n += c
	}
	return n, nil
}

// cString is the name up to its NUL.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// lstatType finds the type of an entry whose d_type the file system did not give.
func lstatType(path string) byte {
	fi, err := os.Lstat(path)
	switch {
	case err != nil:
		return syscall.DT_UNKNOWN // vanished: not counted
	case fi.Mode().IsRegular():
		return syscall.DT_REG
	case fi.IsDir():
		return syscall.DT_DIR
	}
	return syscall.DT_UNKNOWN
}
