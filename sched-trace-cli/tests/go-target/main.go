// schedtarget: a Go program whose scheduling the sched-trace tests know in advance. It runs a
// channel ping-pong, a loopback TCP echo server with clients, sleepers, a CPU-bound goroutine,
// a goroutine locked to its OS thread (pinned to one CPU so a test can put a hog beside it) and
// forced GCs, then prints what it did as one JSON line on stdout: the ground truth the tests
// compare the trace with.
//
// -bench runs only the ping-pong and the echo traffic, as fast as they go, and prints how much
// work it did in the time: the workload the overhead benchmarks time. -pingpong=false leaves the
// ping-pong out; -work N makes the echo server a request server that computes for N rounds of
// burn's loop (a fixed amount of CPU, not of time) before each reply.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/trace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

var (
	duration   = flag.Duration("duration", 2*time.Second, "how long the workload runs")
	bench      = flag.Bool("bench", false, "run the benchmark mode (ping-pong and echo only)")
	pingPong   = flag.Bool("pingpong", true, "run the channel ping-pong")
	work       = flag.Int("work", 0, "rounds of computation the echo server does per request before replying")
	lockedCPU  = flag.Int("locked-cpu", -1, "pin the locked goroutine's thread to this CPU (-1: leave it)")
	clients    = flag.Int("clients", 4, "echo clients")
	gcs        = flag.Int("gcs", 5, "forced garbage collections")
	sleepers   = flag.Int("sleepers", 3, "goroutines that sleep 1 ms in a loop")
	syscalls   = flag.Int("syscalls", 50, "blocking 2 ms nanosleep system calls made by one goroutine")
	waitSignal = flag.Bool("wait", false, "print the pid, then wait for a line on stdin before starting")
	traceFile  = flag.String("trace", "", "write Go's own execution trace (runtime/trace) to this file")
)

// Per start function, goroutines created and exited (the program counts its own).
var created, exited sync.Map

func count(m *sync.Map, name string) {
	v, _ := m.LoadOrStore(name, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func counts(m *sync.Map) map[string]int64 {
	out := map[string]int64{}
	m.Range(func(k, v any) bool { out[k.(string)] = v.(*atomic.Int64).Load(); return true })
	return out
}

// goid of the calling goroutine, from the header of its own stack trace.
func goid() int64 {
	var buf [64]byte
	n := runtime.Stack(buf[:], false)
	f := strings.Fields(string(buf[:n]))
	if len(f) < 2 {
		return -1
	}
	id, _ := strconv.ParseInt(f[1], 10, 64)
	return id
}

// Every goroutine starts in a named function (g.startpc names it, the way `go tool trace` groups
// goroutines): started() counts it at the go statement, finished() when it returns.
func started(name string, wg *sync.WaitGroup) {
	count(&created, name)
	wg.Add(1)
}

func finished(name string, wg *sync.WaitGroup) {
	count(&exited, name)
	wg.Done()
}

type result struct {
	Pid          int              `json:"pid"`
	GoVersion    string           `json:"go_version"`
	Gomaxprocs   int              `json:"gomaxprocs"`
	NumGC        uint32           `json:"num_gc"`
	ForcedGC     int              `json:"forced_gc"`
	Created      map[string]int64 `json:"created"`
	Exited       map[string]int64 `json:"exited"`
	LockedGoid   int64            `json:"locked_goid"`
	LockedTid    int              `json:"locked_tid"`
	LockedSpins  int64            `json:"locked_spins"`
	Syscalls     int64            `json:"syscalls"`
	SpinGoid     int64            `json:"spin_goid"`
	PingPongs    int64            `json:"ping_pongs"`
	Echoes       int64            `json:"echoes"`
	EchoConns    int64            `json:"echo_conns"`
	ElapsedNanos int64            `json:"elapsed_ns"`
	// The benchmark's figures: work done per second of the run.
	PingPongsPerSec float64 `json:"ping_pongs_per_sec"`
	EchoesPerSec    float64 `json:"echoes_per_sec"`
}

var (
	deadline           time.Time
	pingPongs, echoes  atomic.Int64
	conns, lockedSpins atomic.Int64
	syscallsMade       atomic.Int64
	ping, pong         = make(chan int), make(chan int)
	listener           net.Listener
	spinGoid           = make(chan int64, 1)
	lockedIDs          = make(chan [2]int64, 1)
)

// Channel ping-pong: two goroutines hand a token back and forth.
func pinger(wg *sync.WaitGroup) {
	defer finished("main.pinger", wg)
	for time.Now().Before(deadline) {
		ping <- 1
		<-pong
		pingPongs.Add(1)
	}
	close(ping)
}

func ponger(wg *sync.WaitGroup) {
	defer finished("main.ponger", wg)
	for v := range ping {
		pong <- v
	}
}

// Loopback TCP echo server: one goroutine per connection.
func acceptLoop(wg *sync.WaitGroup) {
	defer finished("main.acceptLoop", wg)
	for {
		c, err := listener.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		started("main.echoConn", wg)
		go echoConn(c, wg)
	}
}

func echoConn(c net.Conn, wg *sync.WaitGroup) {
	defer finished("main.echoConn", wg)
	defer c.Close()
	if *work == 0 {
		io.Copy(c, c)
		return
	}
	// A request server: each 16-byte request is answered after a fixed amount of computation.
	buf := make([]byte, 16)
	var x uint64
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			break
		}
		x += burnRounds(*work)
		if _, err := c.Write(buf); err != nil {
			break
		}
	}
	runtime.KeepAlive(x)
}

func echoClient(wg *sync.WaitGroup) {
	defer finished("main.echoClient", wg)
	c, err := net.Dial("tcp", listener.Addr().String())
	if err != nil {
		fmt.Fprintln(os.Stderr, "schedtarget: dial:", err)
		return
	}
	defer c.Close()
	msg := []byte("0123456789abcdef")
	buf := make([]byte, len(msg))
	for time.Now().Before(deadline) {
		if _, err := c.Write(msg); err != nil {
			return
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		echoes.Add(1)
		if !*bench {
			time.Sleep(200 * time.Microsecond)
		}
	}
}

// Sleepers: short timer waits.
func sleeper(wg *sync.WaitGroup) {
	defer finished("main.sleeper", wg)
	for time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// A goroutine in blocking system calls: nanosleep(2 ms) through syscall.Syscall, so that the
// runtime sees it enter and leave a syscall (entersyscall / exitsyscall), unlike a timer sleep.
func syscaller(wg *sync.WaitGroup) {
	defer finished("main.syscaller", wg)
	ts := syscall.Timespec{Nsec: 2_000_000}
	for i := 0; i < *syscalls && time.Now().Before(deadline); i++ {
		syscall.Syscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
		syscallsMade.Add(1)
	}
}

func burn() uint64 { return burnRounds(100000) }

// burnRounds computes for n rounds of a dependent multiply-add (about 2 ns each here).
func burnRounds(n int) uint64 {
	x := uint64(1)
	for i := 0; i < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	return x
}

// A CPU-bound goroutine.
func spinner(wg *sync.WaitGroup) {
	defer finished("main.spinner", wg)
	spinGoid <- goid()
	var x uint64
	for time.Now().Before(deadline) {
		x += burn()
	}
	runtime.KeepAlive(x)
}

// A CPU-bound goroutine locked to its thread, the thread pinned to -locked-cpu.
func lockedSpinner(wg *sync.WaitGroup) {
	defer finished("main.lockedSpinner", wg)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := syscall.Gettid()
	if *lockedCPU >= 0 {
		var set [16]uint64
		set[*lockedCPU/64] |= 1 << (uint(*lockedCPU) % 64)
		_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, 0, unsafe.Sizeof(set), uintptr(unsafe.Pointer(&set)))
		if e != 0 {
			fmt.Fprintln(os.Stderr, "schedtarget: sched_setaffinity:", e)
		}
	}
	lockedIDs <- [2]int64{goid(), int64(tid)}
	var x uint64
	for time.Now().Before(deadline) {
		x += burn()
		lockedSpins.Add(1)
	}
	runtime.KeepAlive(x)
}

func main() {
	flag.Parse()
	if *waitSignal {
		fmt.Fprintf(os.Stderr, "schedtarget: pid %d waiting\n", os.Getpid())
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "schedtarget:", err)
			os.Exit(1)
		}
		if err := trace.Start(f); err != nil {
			fmt.Fprintln(os.Stderr, "schedtarget: runtime/trace:", err)
			os.Exit(1)
		}
		defer f.Close()
		defer trace.Stop()
	}
	var res result
	res.Pid = os.Getpid()
	res.GoVersion = runtime.Version()
	res.Gomaxprocs = runtime.GOMAXPROCS(0)
	start := time.Now()
	deadline = start.Add(*duration)
	var wg, serverWg sync.WaitGroup
	var err error
	if listener, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		fmt.Fprintln(os.Stderr, "schedtarget: listen:", err)
		os.Exit(1)
	}
	if *pingPong {
		started("main.pinger", &wg)
		go pinger(&wg)
		started("main.ponger", &wg)
		go ponger(&wg)
	}
	started("main.acceptLoop", &serverWg)
	go acceptLoop(&serverWg)
	for i := 0; i < *clients; i++ {
		started("main.echoClient", &wg)
		go echoClient(&wg)
	}
	if !*bench {
		for i := 0; i < *sleepers; i++ {
			started("main.sleeper", &wg)
			go sleeper(&wg)
		}
		started("main.syscaller", &wg)
		go syscaller(&wg)
		started("main.spinner", &wg)
		go spinner(&wg)
		res.SpinGoid = <-spinGoid
		started("main.lockedSpinner", &wg)
		go lockedSpinner(&wg)
		l := <-lockedIDs
		res.LockedGoid, res.LockedTid = l[0], int(l[1])
		// Forced GCs, spread over the run. In between, the main goroutine sleeps in a blocking
		// system call rather than on a timer: its thread then sleeps in the kernel with it as
		// the current goroutine, so a recording that starts late (by --pid) sees it at the
		// identity level, which only observes goroutines that hold a thread when it switches.
		for i := 0; i < *gcs; i++ {
			ts := syscall.NsecToTimespec(int64(*duration / time.Duration(*gcs+1)))
			syscall.Syscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
			runtime.GC()
			res.ForcedGC++
		}
	}
	wg.Wait()
	listener.Close()
	serverWg.Wait()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.NumGC = ms.NumGC
	res.LockedSpins = lockedSpins.Load()
	res.Syscalls = syscallsMade.Load()
	res.Created, res.Exited = counts(&created), counts(&exited)
	res.PingPongs, res.Echoes, res.EchoConns = pingPongs.Load(), echoes.Load(), conns.Load()
	res.ElapsedNanos = time.Since(start).Nanoseconds()
	secs := float64(res.ElapsedNanos) / 1e9
	res.PingPongsPerSec, res.EchoesPerSec = float64(res.PingPongs)/secs, float64(res.Echoes)/secs
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}
