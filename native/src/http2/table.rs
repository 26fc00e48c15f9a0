//! The stream state table: an observer's view of RFC 9113 §5.1 that also knows whether
//! final response headers were seen (so DATA before HEADERS, or a second non-final
//! HEADERS, is an error). An input not in the table is a stream error.

/// Stream states: (request phase, response phase).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not yet opened.
    Idle,
    /// Request headers seen, neither end finished.
    Open,
    /// ... and final response headers seen.
    OpenResp,
    /// Client ended its side; no final response headers yet.
    ReqDone,
    /// Client ended; response headers seen, body flowing.
    ReqDoneResp,
    /// Server ended its side; client still sending.
    RespDone,
    /// CONNECT answered 2xx: DATA is tunnelled bytes.
    Tunnel,
    Closed,
}

/// Who sent what; `*Es` = with END_STREAM; `SInfo` = 1xx response headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    CHeaders,
    CHeadersEs,
    CData,
    CDataEs,
    SInfo,
    SHeaders,
    SHeadersEs,
    STunnel,
    SData,
    SDataEs,
    Push,
    Rst,
}

pub const STATES: [State; 8] = [
    State::Idle,
    State::Open,
    State::OpenResp,
    State::ReqDone,
    State::ReqDoneResp,
    State::RespDone,
    State::Tunnel,
    State::Closed,
];

pub const INPUTS: [Input; 12] = [
    Input::CHeaders,
    Input::CHeadersEs,
    Input::CData,
    Input::CDataEs,
    Input::SInfo,
    Input::SHeaders,
    Input::SHeadersEs,
    Input::STunnel,
    Input::SData,
    Input::SDataEs,
    Input::Push,
    Input::Rst,
];

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Open => "open",
            State::OpenResp => "open_resp",
            State::ReqDone => "req_done",
            State::ReqDoneResp => "req_done_resp",
            State::RespDone => "resp_done",
            State::Tunnel => "tunnel",
            State::Closed => "closed",
        }
    }
}

impl Input {
    pub fn name(self) -> &'static str {
        match self {
            Input::CHeaders => "c_headers",
            Input::CHeadersEs => "c_headers_es",
            Input::CData => "c_data",
            Input::CDataEs => "c_data_es",
            Input::SInfo => "s_info",
            Input::SHeaders => "s_headers",
            Input::SHeadersEs => "s_headers_es",
            Input::STunnel => "s_tunnel",
            Input::SData => "s_data",
            Input::SDataEs => "s_data_es",
            Input::Push => "push",
            Input::Rst => "rst",
        }
    }

    /// DATA from `client` (or the server), with or without END_STREAM.
    pub fn data(client: bool, end: bool) -> Input {
        match (client, end) {
            (true, false) => Input::CData,
            (true, true) => Input::CDataEs,
            (false, false) => Input::SData,
            (false, true) => Input::SDataEs,
        }
    }
}

/// Next stream state, or None when the pair is a stream error.
pub fn next(state: State, input: Input) -> Option<State> {
    use Input::*;
    use State::*;
    Some(match (state, input) {
        (Idle, CHeaders) => Open,
        (Idle, CHeadersEs) => ReqDone,
        (Idle, Push) => ReqDone, // PUSH_PROMISE: the request is already complete
        (Open, CData) => Open,
        (Open, CDataEs) => ReqDone,
        (Open, CHeadersEs) => ReqDone, // request trailers
        (Open, SInfo) => Open,
        (Open, SHeaders) => OpenResp,
        (Open, SHeadersEs) => RespDone, // early / trailers-only response
        (Open, STunnel) => Tunnel,
        (Open, Rst) => Closed,
        (OpenResp, CData) => OpenResp,
        (OpenResp, CDataEs) => ReqDoneResp,
        (OpenResp, CHeadersEs) => ReqDoneResp,
        (OpenResp, SData) => OpenResp,
        (OpenResp, SDataEs) => RespDone,
        (OpenResp, SHeadersEs) => RespDone, // response trailers
        (OpenResp, Rst) => Closed,
        (ReqDone, SInfo) => ReqDone,
        (ReqDone, SHeaders) => ReqDoneResp,
        (ReqDone, SHeadersEs) => Closed,
        (ReqDone, Rst) => Closed,
        (ReqDoneResp, SData) => ReqDoneResp,
        (ReqDoneResp, SDataEs) => Closed,
        (ReqDoneResp, SHeadersEs) => Closed,
        (ReqDoneResp, Rst) => Closed,
        (RespDone, CData) => RespDone,
        (RespDone, CDataEs) => Closed,
        (RespDone, CHeadersEs) => Closed,
        (RespDone, Rst) => Closed,
        (Tunnel, CData) => Tunnel,
        (Tunnel, CDataEs) => Tunnel,
        (Tunnel, SData) => Tunnel,
        (Tunnel, SDataEs) => Tunnel,
        (Tunnel, Rst) => Closed,
        _ => return None,
    })
}

/// Every (state, input, next state) of the table, for the Python-side table walk.
pub fn entries() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    for s in STATES {
        for i in INPUTS {
            if let Some(n) = next(s, i) {
                out.push((s.name(), i.name(), n.name()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reachable_and_closed_is_final() {
        let mut reached = vec![State::Idle];
        loop {
            let before = reached.len();
            for s in reached.clone() {
                for i in INPUTS {
                    if let Some(n) = next(s, i) {
                        if !reached.contains(&n) {
                            reached.push(n);
                        }
                    }
                }
            }
            if reached.len() == before {
                break;
            }
        }
        assert_eq!(reached.len(), STATES.len());
        assert!(INPUTS.iter().all(|&i| next(State::Closed, i).is_none()));
        assert_eq!(entries().len(), 35);
    }
}
