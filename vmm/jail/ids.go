package jail

import (
	"bufio"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Host ids of workers started by root. Each worker runs as its own uid and gid,
// drawn at random from a range that distributions leave unallocated (systemd's
// uid conventions keep 0x70000000–0x7ffdffff free: above the container ranges
// of systemd-nspawn, below its foreign-image range and below 2^31, which some
// tools treat as negative). No account, no other program and no other worker
// of this process runs as that uid, so nothing but the host (root) may signal
// or ptrace a worker. Descriptors are checked when they are opened, so the
// images the host passes stay readable and writable whatever the worker's uid.
const (
	workerIDFirst = 0x70000000
	workerIDCount = 0x0ffe0000
)

// idPool hands out worker ids no running worker of this process holds.
type idPool struct {
	mu       sync.Mutex
	inUse    map[int]bool
	reserved [][2]int // subordinate id ranges [first, first+count) of /etc/subuid and /etc/subgid
	loaded   bool
}

var workerIDs idPool

// take returns an id in [workerIDFirst, workerIDFirst+workerIDCount) that no
// running worker of this process uses and, unless the host's subordinate id
// ranges (the ids other users' containers run as) cover nearly all of it, that
// none of those ranges contains.
func (p *idPool) take() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.loaded {
		p.reserved = append(subordinateRanges("/etc/subuid"), subordinateRanges("/etc/subgid")...)
		p.inUse = map[int]bool{}
		p.loaded = true
	}
	for try := 0; ; try++ {
		id := workerIDFirst + rand.IntN(workerIDCount)
		if !p.inUse[id] && (try >= 1000 || !inRanges(id, p.reserved)) {
			p.inUse[id] = true
			return id
		}
	}
}

// release returns id to the pool once its worker has exited.
func (p *idPool) release(id int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.inUse, id)
}

func inRanges(id int, ranges [][2]int) bool {
	for _, r := range ranges {
		if id >= r[0] && id-r[0] < r[1] {
			return true
		}
	}
	return false
}

// subordinateRanges reads the "name:first:count" lines of a subordinate id
// file; a missing file, a comment or a malformed line adds nothing.
func subordinateRanges(path string) [][2]int {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][2]int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		fields := strings.Split(line, ":")
		if strings.HasPrefix(line, "#") || len(fields) != 3 {
			continue
		}
		first, err1 := strconv.Atoi(fields[1])
		count, err2 := strconv.Atoi(fields[2])
		if err1 == nil && err2 == nil && first >= 0 && count > 0 {
			out = append(out, [2]int{first, count})
		}
	}
	return out
}
