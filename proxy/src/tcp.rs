//! Opaque TCP: bytes copied both ways. The cluster's max connections applies: an overflowing
//! connection is closed at once and counted (`upstream_cx_overflow`).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::cluster::Cluster;
use crate::stats::ListenerStats;

pub async fn proxy(
    mut down: TcpStream,
    cluster: Arc<Cluster>,
    listener: Arc<ListenerStats>,
    connect_timeout: Duration,
) {
    listener.tcp.downstream_cx_total.inc();
    listener.tcp.downstream_cx_active.inc();
    struct Active(Arc<ListenerStats>);
    impl Drop for Active {
        fn drop(&mut self) {
            self.0.tcp.downstream_cx_active.dec();
        }
    }
    let _active = Active(listener.clone());
    let Some(_slot) = cluster.open_tcp() else {
        listener.tcp.upstream_cx_overflow.inc();
        return;
    };
    let st = &cluster.stats;
    let mut up = match tokio::time::timeout(connect_timeout, TcpStream::connect(cluster.addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            st.upstream_cx_connect_fail.inc();
            return;
        }
    };
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut down, &mut up).await {
        Ok((to_up, to_down)) => {
            st.upstream_cx_tx_bytes_total.add(to_up);
            st.upstream_cx_rx_bytes_total.add(to_down);
        }
        Err(e) => tracing::debug!(cluster = %cluster.name, error = %e, "tcp proxy ended"),
    }
    st.upstream_cx_destroy.inc();
}
