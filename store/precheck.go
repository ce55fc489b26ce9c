package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// bbolt's meta page, as it lays it out on disk (native byte order): a
// 16-byte page header, then magic, version, page size, flags, the root
// bucket (root page, sequence), freelist page, high-water page id, txid,
// and an FNV-64a checksum of the fields before it.
const (
	boltMagic     = 0xED0CDAED
	boltVersion   = 2
	metaOffset    = 16
	metaSumOffset = 56 // offset of the checksum inside the meta
)

type metaInfo struct {
	pageSize uint32
	freelist uint64
	pgid     uint64
	txid     uint64
}

func parseMeta(page []byte) (metaInfo, bool) {
	if len(page) < metaOffset+metaSumOffset+8 {
		return metaInfo{}, false
	}
	m := page[metaOffset:]
	ne := binary.NativeEndian
	h := fnv.New64a()
	h.Write(m[:metaSumOffset])
	if ne.Uint32(m[0:]) != boltMagic || ne.Uint32(m[4:]) != boltVersion || h.Sum64() != ne.Uint64(m[metaSumOffset:]) {
		return metaInfo{}, false
	}
	return metaInfo{pageSize: ne.Uint32(m[8:]), freelist: ne.Uint64(m[32:]), pgid: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:])}, true
}

// precheck looks at an existing file's meta pages before bbolt maps it:
// bbolt trusts them and reads pages past the end of a truncated file, which
// faults. It reports ErrCorrupt when the newest valid meta page names pages
// the file does not have. A file with no valid meta page is left to bbolt,
// which reports it as invalid. Anything but a regular file at path is
// ErrCorrupt, and is never opened in a way that blocks or follows a link.
func precheck(path string) error {
	f, err := openRegular(path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return err
	}
	var best metaInfo
	found := false
	page := make([]byte, 4096)
	n, _ := io.ReadFull(f, page)
	m0, ok0 := parseMeta(page[:n])
	if ok0 {
		best, found = m0, true
	}
	for _, ps := range []int64{int64(m0.pageSize), 4096} {
		if ps < 1024 || (ok0 && ps != int64(m0.pageSize)) {
			continue
		}
		n, _ := f.ReadAt(page, ps)
		if m1, ok := parseMeta(page[:n]); ok && (!found || m1.txid > best.txid) {
			best, found = m1, true
		}
		break
	}
	if !found {
		return nil
	}
	need := int64(best.pgid) * int64(best.pageSize)
	if best.pgid > 1<<40 || need > fi.Size() {
		return fmt.Errorf("%w: file is %d bytes, its pages need %d (truncated)", ErrCorrupt, fi.Size(), need)
	}
	if best.freelist >= best.pgid && best.freelist != ^uint64(0) {
		return fmt.Errorf("%w: freelist page %d beyond the last page %d", ErrCorrupt, best.freelist, best.pgid)
	}
	return nil
}

// unmapFile removes every mapping of the file f from this process. When
// bbolt panics half-way through Open it leaves its mapping behind, and the
// mapping keeps the file's flock held: without this a corrupt journal would
// stay "in use" until the process exits.
func unmapFile(f *os.File) {
	fi, err := f.Stat()
	if err != nil {
		return
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return
	}
	dev := fmt.Sprintf("%02x:%02x", unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)))
	ino := strconv.FormatUint(uint64(st.Ino), 10)
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(maps), "\n") {
		// start-end perms offset dev inode path
		fields := strings.Fields(line)
		if len(fields) < 5 || fields[3] != dev || fields[4] != ino {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && end > start {
			unix.Syscall(unix.SYS_MUNMAP, uintptr(start), uintptr(end-start), 0)
		}
	}
}
