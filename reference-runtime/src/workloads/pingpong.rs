//! `pingpong`: pairs of tasks hand a message back and forth over two channels. Every round trip
//! is two parks on a channel and two readies by the partner task, so the run queues churn and
//! idle Ps keep waking spinning Ms to steal the partner that was just readied.

use std::io;

use super::{Config, Measured, Stop, stopped, sum, timed};
use crate::{channel, spawn};

pub(super) async fn main(cfg: Config) -> io::Result<Measured> {
    timed(cfg, move |stop| async move { Ok(pairs(cfg.scaled(4), stop).await) }).await
}

/// Runs `n` ping-pong pairs until `stop`; returns the round trips.
pub(super) async fn pairs(n: usize, stop: Stop) -> u64 {
    let mut pingers = Vec::with_capacity(n);
    let mut pongers = Vec::with_capacity(n);
    for _ in 0..n {
        let (to_pong, mut pong_rx) = channel::<u64>(1);
        let (to_ping, mut ping_rx) = channel::<u64>(1);
        pongers.push(spawn(async move {
            while let Some(v) = pong_rx.recv().await {
                if to_ping.send(v).await.is_err() {
                    break;
                }
            }
            0
        }));
        let stop = stop.clone();
        pingers.push(spawn(async move {
            let mut trips = 0u64;
            loop {
                if to_pong.send(trips).await.is_err() || ping_rx.recv().await.is_none() {
                    break;
                }
                trips += 1;
                if stopped(&stop) {
                    break;
                }
            }
            // Dropping `to_pong` ends the partner.
            trips
        }));
    }
    let trips = sum(pingers).await;
    sum(pongers).await;
    trips
}
