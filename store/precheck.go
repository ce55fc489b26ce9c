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
	root     uint64 // the root bucket's page
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
	return metaInfo{pageSize: ne.Uint32(m[8:]), root: ne.Uint64(m[16:]), freelist: ne.Uint64(m[32:]), pgid: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:])}, true
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
	if ok0 && m0.pageSize != best.pageSize {
		return fmt.Errorf("%w: the meta pages disagree on the page size (%d, %d)", ErrCorrupt, m0.pageSize, best.pageSize)
	}
	return walkPages(f, best)
}

// bbolt's page layout (native byte order): a 16-byte header (id, flags,
// count, overflow), then count 16-byte elements. A branch element is (pos,
// ksize, child page id), a leaf element (flags, pos, ksize, vsize); pos
// counts from the element itself. A bucket's value starts with its root
// page id and sequence; root 0 means an inline bucket, whose leaf page
// follows in the value.
const (
	pageHeaderSize  = 16
	pageElementSize = 16
	bucketHeader    = 16
	branchPageFlag  = 0x01
	leafPageFlag    = 0x02
	freelistFlag    = 0x10
	bucketLeafFlag  = 0x01
	noFreelist      = ^uint64(0)
)

// walkPages reads, from the file and not through bbolt, every page that
// bbolt would reach from the meta m: the freelist and the B+trees of every
// bucket, inline buckets included. Each page must lie below the high-water
// mark with its overflow pages, be referenced once, have the right type and
// hold its elements, keys and values within itself; the freelist must name
// pages that exist. bbolt trusts all of this: a garbled overflow count makes
// its consistency check loop for billions of pages, a garbled freelist
// count makes it allocate without bound, and a page that refers to one of
// its ancestors sends its cursors and its check round for ever. None of
// these can be recovered from, so they are refused here, before bbolt
// reads the file. The walk keeps its own work list: it neither recurses
// nor visits a page twice.
func walkPages(f *os.File, m metaInfo) error {
	ps := uint64(m.pageSize)
	if ps < 512 || ps > 1<<16 || ps&(ps-1) != 0 {
		return fmt.Errorf("%w: page size %d", ErrCorrupt, ps)
	}
	if m.pgid < 3 || m.root < 2 || m.root >= m.pgid {
		return fmt.Errorf("%w: root page %d, high-water mark %d", ErrCorrupt, m.root, m.pgid)
	}
	ne := binary.NativeEndian
	seen := make([]bool, m.pgid)
	seen[0], seen[1] = true, true // the meta pages

	// readPage reads page id with its overflow pages, after checking that
	// they exist and were not reached before.
	readPage := func(id uint64, what string) ([]byte, error) {
		if id < 2 || id >= m.pgid {
			return nil, fmt.Errorf("%w: %s page %d out of bounds (high-water mark %d)", ErrCorrupt, what, id, m.pgid)
		}
		hdr := make([]byte, pageHeaderSize)
		if _, err := f.ReadAt(hdr, int64(id*ps)); err != nil {
			return nil, fmt.Errorf("%w: read %s page %d: %v", ErrCorrupt, what, id, err)
		}
		if got := ne.Uint64(hdr); got != id {
			return nil, fmt.Errorf("%w: %s page %d says it is page %d", ErrCorrupt, what, id, got)
		}
		overflow := uint64(ne.Uint32(hdr[12:]))
		if overflow >= m.pgid-id {
			return nil, fmt.Errorf("%w: %s page %d has %d overflow pages, past the high-water mark %d", ErrCorrupt, what, id, overflow, m.pgid)
		}
		for p := id; p <= id+overflow; p++ {
			if seen[p] {
				return nil, fmt.Errorf("%w: %s page %d reaches page %d, which is reached twice", ErrCorrupt, what, id, p)
			}
			seen[p] = true
		}
		buf := make([]byte, (overflow+1)*ps)
		if _, err := f.ReadAt(buf, int64(id*ps)); err != nil {
			return nil, fmt.Errorf("%w: read %s page %d: %v", ErrCorrupt, what, id, err)
		}
		return buf, nil
	}

	if m.freelist != noFreelist {
		buf, err := readPage(m.freelist, "freelist")
		if err != nil {
			return err
		}
		if flags := ne.Uint16(buf[8:]); flags != freelistFlag {
			return fmt.Errorf("%w: freelist page %d has flags %#x", ErrCorrupt, m.freelist, flags)
		}
		start, count := uint64(pageHeaderSize), uint64(ne.Uint16(buf[10:]))
		if count == 0xFFFF {
			if len(buf) < pageHeaderSize+8 {
				return fmt.Errorf("%w: freelist page %d: no room for its count", ErrCorrupt, m.freelist)
			}
			start, count = start+8, ne.Uint64(buf[pageHeaderSize:])
		}
		if count > (uint64(len(buf))-start)/8 {
			return fmt.Errorf("%w: freelist page %d: %d free pages do not fit in it", ErrCorrupt, m.freelist, count)
		}
		for i := uint64(0); i < count; i++ {
			if id := ne.Uint64(buf[start+8*i:]); id < 2 || id >= m.pgid {
				return fmt.Errorf("%w: freelist page %d frees page %d, out of bounds (high-water mark %d)", ErrCorrupt, m.freelist, id, m.pgid)
			}
		}
	}

	// The work list: a page to read (id), or an inline bucket's page
	// (inline, with the page that holds it in id).
	type item struct {
		id     uint64
		inline []byte
	}
	work := []item{{id: m.root}}
	for len(work) > 0 {
		it := work[len(work)-1]
		work = work[:len(work)-1]
		buf, where := it.inline, fmt.Sprintf("page %d", it.id)
		if buf == nil {
			var err error
			if buf, err = readPage(it.id, "bucket"); err != nil {
				return err
			}
		} else {
			where = fmt.Sprintf("inline bucket in page %d", it.id)
		}
		if len(buf) < pageHeaderSize {
			return fmt.Errorf("%w: %s: %d bytes, shorter than a page header", ErrCorrupt, where, len(buf))
		}
		flags, count := ne.Uint16(buf[8:]), uint64(ne.Uint16(buf[10:]))
		if flags != branchPageFlag && flags != leafPageFlag || it.inline != nil && flags != leafPageFlag {
			return fmt.Errorf("%w: %s has flags %#x, want a branch or leaf page", ErrCorrupt, where, flags)
		}
		if flags == branchPageFlag && count == 0 {
			return fmt.Errorf("%w: %s: a branch page with no elements", ErrCorrupt, where)
		}
		size := uint64(len(buf))
		if pageHeaderSize+count*pageElementSize > size {
			return fmt.Errorf("%w: %s: %d elements do not fit in it", ErrCorrupt, where, count)
		}
		for i := uint64(0); i < count; i++ {
			e := pageHeaderSize + i*pageElementSize
			el := buf[e : e+pageElementSize]
			if flags == branchPageFlag {
				pos, ksize := uint64(ne.Uint32(el[0:])), uint64(ne.Uint32(el[4:]))
				if e+pos+ksize > size {
					return fmt.Errorf("%w: %s: key of element %d past the end of the page", ErrCorrupt, where, i)
				}
				work = append(work, item{id: ne.Uint64(el[8:])})
				continue
			}
			eflags, pos := ne.Uint32(el[0:]), uint64(ne.Uint32(el[4:]))
			ksize, vsize := uint64(ne.Uint32(el[8:])), uint64(ne.Uint32(el[12:]))
			if e+pos+ksize+vsize > size {
				return fmt.Errorf("%w: %s: key or value of element %d past the end of the page", ErrCorrupt, where, i)
			}
			if eflags&bucketLeafFlag == 0 {
				continue
			}
			v := buf[e+pos+ksize : e+pos+ksize+vsize]
			if len(v) < bucketHeader {
				return fmt.Errorf("%w: %s: bucket element %d has a %d-byte value", ErrCorrupt, where, i, len(v))
			}
			if root := ne.Uint64(v); root != 0 {
				work = append(work, item{id: root})
			} else {
				work = append(work, item{id: it.id, inline: v[bucketHeader:]})
			}
		}
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
