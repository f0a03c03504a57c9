//! The runtime's public API: tasks, channels, timers, yields, blocking sections, TCP, panics.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reference_runtime::{
    Runtime, SendError, TcpListener, TcpStream, blocking, channel, sleep, spawn, yield_now,
};

fn rt(procs: usize) -> Runtime {
    Runtime::builder().procs(procs).no_ground_truth().build().expect("runtime")
}

#[test]
fn block_on_returns_the_output_and_joins_tasks() {
    let rt = rt(2);
    let total = rt.block_on(async {
        let handles: Vec<_> = (0..1000u64).map(|i| spawn(async move { i * 2 })).collect();
        let mut total = 0;
        for h in handles {
            total += h.await;
        }
        total
    });
    assert_eq!(total, 999 * 1000);
    // The same runtime runs another session.
    assert_eq!(rt.block_on(async { spawn(async { 7 }).await }), 7);
}

#[test]
fn run_reports_counters() {
    let rt = rt(2);
    let (out, stats) = rt
        .run(async {
            let inner: Vec<_> = (0..10).map(|_| spawn(async { spawn(async {}).await })).collect();
            for h in inner {
                h.await;
            }
            sleep(Duration::from_millis(2)).await;
            1
        })
        .expect("run");
    assert_eq!(out, 1);
    assert_eq!(stats.spawned, 21, "the root, 10 tasks and 10 grandchildren");
    assert_eq!(stats.procs.len(), 2);
    assert!(stats.procs.iter().map(|p| p.tasks_run).sum::<u64>() >= 21);
    assert_eq!(stats.timer_fires, 1);
    assert!(!stats.ms.is_empty() && stats.ms.iter().all(|m| m.tid != 0));
}

#[test]
fn channel_delivers_in_order_and_ends() {
    let rt = rt(2);
    let got = rt.block_on(async {
        let (tx, mut rx) = channel::<u32>(4);
        let producers: Vec<_> = (0..3u32)
            .map(|p| {
                let tx = tx.clone();
                spawn(async move {
                    for i in 0..1000 {
                        tx.send(p * 10_000 + i).await.expect("receiver alive");
                    }
                })
            })
            .collect();
        drop(tx);
        let mut got = Vec::new();
        while let Some(v) = rx.recv().await {
            got.push(v);
        }
        for p in producers {
            p.await;
        }
        got
    });
    assert_eq!(got.len(), 3000);
    for p in 0..3 {
        let mine: Vec<_> = got.iter().filter(|v| **v / 10_000 == p).map(|v| v % 10_000).collect();
        assert_eq!(mine, (0..1000).collect::<Vec<_>>(), "producer {p} out of order");
    }
}

#[test]
fn send_to_a_dropped_receiver_fails() {
    let rt = rt(1);
    let result = rt.block_on(async {
        let (tx, rx) = channel::<&'static str>(1);
        drop(rx);
        tx.send("lost").await
    });
    assert_eq!(result, Err(SendError("lost")));
}

#[test]
fn a_full_channel_parks_the_sender_until_the_receiver_drains() {
    let rt = rt(2);
    let order = rt.block_on(async {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = channel::<u32>(1);
        let sender = {
            let log = log.clone();
            spawn(async move {
                for i in 0..3 {
                    tx.send(i).await.expect("receiver alive");
                    log.lock().expect("log").push(format!("sent {i}"));
                }
            })
        };
        sleep(Duration::from_millis(20)).await;
        log.lock().expect("log").push("receiving".to_string());
        while let Some(v) = rx.recv().await {
            log.lock().expect("log").push(format!("got {v}"));
        }
        sender.await;
        Arc::try_unwrap(log).expect("one owner").into_inner().expect("log")
    });
    // The buffer holds one message: the second send waits for the receiver.
    assert_eq!(order[..2], ["sent 0", "receiving"]);
    assert_eq!(order.iter().filter(|l| l.starts_with("got")).count(), 3);
}

#[test]
fn sleep_waits_at_least_its_duration() {
    let rt = rt(2);
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        let sleepers: Vec<_> = [30u64, 10, 20]
            .into_iter()
            .map(|ms| {
                spawn(async move {
                    let t = Instant::now();
                    sleep(Duration::from_millis(ms)).await;
                    (ms, t.elapsed())
                })
            })
            .collect();
        for s in sleepers {
            let (ms, took) = s.await;
            assert!(took >= Duration::from_millis(ms), "slept {took:?} for {ms} ms");
            assert!(took < Duration::from_millis(ms + 2000), "slept {took:?} for {ms} ms");
        }
        start.elapsed()
    });
    assert!(elapsed >= Duration::from_millis(30));
}

#[test]
fn yield_lets_the_other_task_run_on_one_p() {
    let rt = rt(1);
    let trace = rt.block_on(async {
        let trace = Arc::new(Mutex::new(String::new()));
        let tasks: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let trace = trace.clone();
                spawn(async move {
                    for _ in 0..3 {
                        trace.lock().expect("trace").push_str(name);
                        yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let guard = trace.lock().expect("trace");
        guard.clone()
    });
    assert_eq!(trace, "ababab");
}

#[test]
fn blocking_hands_the_p_to_other_tasks() {
    // One P: the other task can only run while the blocked task's M has handed that P off.
    let rt = rt(1);
    let other_ran_meanwhile = rt.block_on(async move {
        let flag = Arc::new(AtomicBool::new(false));
        let seen = flag.clone();
        let blocker = spawn(async move {
            blocking(move || {
                let start = Instant::now();
                while !seen.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                seen.load(Ordering::SeqCst)
            })
        });
        let other = spawn(async move {
            for _ in 0..10 {
                yield_now().await;
            }
            flag.store(true, Ordering::SeqCst);
        });
        other.await;
        blocker.await
    });
    assert!(other_ran_meanwhile, "the P was not handed off during the blocking section");
}

#[test]
fn blocking_outside_a_task_just_runs() {
    assert_eq!(blocking(|| 5), 5);
}

#[test]
fn tcp_moves_a_large_payload_both_ways() {
    let rt = rt(2);
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let result: io::Result<(u64, u64)> = rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        // The server reads to the end, then answers with the byte count and a checksum.
        let server = spawn(async move {
            let (mut s, _) = listener.accept().await?;
            let mut buf = vec![0u8; 64 * 1024];
            let (mut count, mut sum) = (0u64, 0u64);
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                count += n as u64;
                sum = buf[..n].iter().fold(sum, |acc, &b| acc.wrapping_mul(31).wrapping_add(u64::from(b)));
            }
            let mut answer = count.to_le_bytes().to_vec();
            answer.extend_from_slice(&sum.to_le_bytes());
            s.write_all(&answer).await?;
            Ok::<_, io::Error>(())
        });
        let mut client = TcpStream::connect(addr).await?;
        // Far more than the socket buffers hold: the writer parks in the netpoller.
        client.write_all(&sent).await?;
        client.shutdown_write()?;
        let mut answer = [0u8; 16];
        client.read_exact(&mut answer).await?;
        server.await?;
        let count = u64::from_le_bytes(answer[..8].try_into().expect("8 bytes"));
        let sum = u64::from_le_bytes(answer[8..].try_into().expect("8 bytes"));
        Ok((count, sum))
    });
    let (count, sum) = result.expect("tcp transfer");
    assert_eq!(count, payload.len() as u64);
    let want = payload.iter().fold(0u64, |acc, &b| acc.wrapping_mul(31).wrapping_add(u64::from(b)));
    assert_eq!(sum, want);
}

#[test]
fn connect_to_a_closed_port_fails() {
    let rt = rt(1);
    let err = rt.block_on(async {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        TcpStream::connect(port).await.err()
    });
    assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::ConnectionRefused));
}

#[test]
fn sockets_need_a_runtime() {
    let err = TcpListener::bind("127.0.0.1:0").expect_err("an error outside the runtime");
    assert!(err.to_string().contains("inside a reference-runtime task"));
}

#[test]
fn a_task_panic_reaches_its_joiner_and_the_runtime_survives() {
    let rt = rt(2);
    let caught = panic::catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async {
            spawn(async {
                panic!("boom");
            })
            .await
        })
    }));
    let payload = caught.expect_err("the panic propagates to block_on");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));
    assert_eq!(rt.block_on(async { 3 }), 3);
}

#[test]
fn spawn_outside_a_runtime_panics() {
    let r = panic::catch_unwind(|| {
        drop(spawn(async {}));
    });
    assert!(r.is_err());
}

#[test]
fn tasks_left_running_are_dropped_at_shutdown() {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let rt = rt(2);
    let flag = Flag(dropped.clone());
    rt.block_on(async move {
        let (_tx, mut rx) = channel::<()>(1);
        // Parked forever on a channel whose sender the root keeps alive.
        let _parked = spawn(async move {
            let _flag = flag;
            rx.recv().await;
        });
        sleep(Duration::from_millis(5)).await;
        std::mem::forget(_tx);
    });
    assert!(dropped.load(Ordering::SeqCst), "the parked task's future was not dropped");
}

#[test]
fn many_tasks_on_many_ps() {
    let rt = rt(4);
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    rt.block_on(async move {
        let handles: Vec<_> = (0..2000)
            .map(|_| {
                let c = c.clone();
                spawn(async move {
                    for _ in 0..5 {
                        c.fetch_add(1, Ordering::Relaxed);
                        yield_now().await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await;
        }
    });
    assert_eq!(counter.load(Ordering::Relaxed), 10_000);
}

#[test]
fn the_thread_limit_holds_and_work_still_finishes() {
    use reference_runtime::workloads::{self, Options};
    for (procs, max) in [(1, 1), (2, 2), (2, 3)] {
        let rt = Runtime::builder().procs(procs).max_threads(max).no_ground_truth().build().expect("runtime");
        let opts = Options { duration: Duration::from_millis(100), ..Options::default() };
        let out = workloads::run_on(&rt, "mixed", &opts).expect("mixed");
        assert!(out.ops > 0);
        assert!(out.stats.ms.len() <= max, "{} Ms over a limit of {max}", out.stats.ms.len());
    }
}
