//! The `pingpong` and `netpoll` workloads on tokio's multi-thread runtime, with as many workers
//! as the reference runtime has Ps, printing the same final JSON line: a side-by-side throughput
//! comparison, not a race.
//!
//! `cargo run --release -p reference-runtime --example tokio_peer -- pingpong --duration 3`

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const USAGE: &str = "usage: tokio_peer pingpong|netpoll [--procs N] [--scale S] [--duration SECS]";

type Stop = Arc<AtomicBool>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (workload, procs, scale, duration) = match parse(&args) {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("tokio_peer: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(procs).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio_peer: cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let is_pingpong = workload == "pingpong";
    let result = rt.block_on(async move {
        let start = Instant::now();
        let stop: Stop = Arc::new(AtomicBool::new(false));
        let work = if is_pingpong {
            tokio::spawn(pingpong(4 * scale, stop.clone()))
        } else {
            tokio::spawn(echo(8 * scale, stop.clone()))
        };
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let ops = work.await.map_err(io::Error::other)??;
        Ok::<_, io::Error>((ops, start.elapsed().as_secs_f64()))
    });
    match result {
        Ok((ops, seconds)) => {
            println!("{}", reference_runtime::workloads::json_line(&workload, procs, ops, seconds));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokio_peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<(String, usize, usize, Duration), String> {
    let mut it = args.iter();
    let workload = it.next().ok_or("no workload given")?.clone();
    if workload != "pingpong" && workload != "netpoll" {
        return Err(format!("unknown workload {workload:?}"));
    }
    let mut procs = None;
    let (mut scale, mut duration) = (1, Duration::from_secs(1));
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {value:?}");
        match flag.as_str() {
            "--procs" => procs = Some(value.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(bad)?),
            "--scale" => scale = value.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(bad)?,
            "--duration" => {
                duration = value
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(bad)?
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let procs = match procs {
        Some(n) => n,
        None => reference_runtime::default_procs().map_err(|e| e.to_string())?,
    };
    Ok((workload, procs, scale, duration))
}

async fn pingpong(pairs: usize, stop: Stop) -> io::Result<u64> {
    let mut pingers = Vec::new();
    for _ in 0..pairs {
        let (to_pong, mut pong_rx) = mpsc::channel::<u64>(1);
        let (to_ping, mut ping_rx) = mpsc::channel::<u64>(1);
        tokio::spawn(async move {
            while let Some(v) = pong_rx.recv().await {
                if to_ping.send(v).await.is_err() {
                    break;
                }
            }
        });
        let stop = stop.clone();
        pingers.push(tokio::spawn(async move {
            let mut trips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if to_pong.send(trips).await.is_err() || ping_rx.recv().await.is_none() {
                    break;
                }
                trips += 1;
            }
            trips
        }));
    }
    let mut total = 0;
    for p in pingers {
        total += p.await.map_err(io::Error::other)?;
    }
    Ok(total)
}

async fn echo(clients: usize, stop: Stop) -> io::Result<u64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let handles: Vec<_> = (0..clients).map(|_| tokio::spawn(client(addr, stop.clone()))).collect();
    let mut total = 0;
    for h in handles {
        total += h.await.map_err(io::Error::other)??;
    }
    Ok(total)
}

async fn client(addr: SocketAddr, stop: Stop) -> io::Result<u64> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = [b'x'; 64];
    let mut response = [0u8; 64];
    let mut trips = 0;
    while !stop.load(Ordering::Relaxed) {
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
        trips += 1;
    }
    Ok(trips)
}
