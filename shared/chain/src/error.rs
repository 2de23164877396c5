//! The crate's error type and its mapping from alloy's errors.

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::transports::{RpcError, TransportError};

use crate::ChainId;

/// Errors talking to the chain.
///
/// [`ChainError::is_retryable`] tells a caller whether trying the same operation again later
/// can help (a flaky RPC endpoint, a timeout) or not (a revert, a wallet that is not allowed,
/// the wrong chain).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The RPC URL is not a valid URL.
    #[error("invalid ethereum rpc url: {0}")]
    InvalidUrl(String),
    /// The RPC endpoint failed or could not be reached (transport errors, malformed or empty
    /// responses).
    #[error("ethereum rpc request failed: {0}")]
    Rpc(String),
    /// The node answered with a JSON-RPC error that is not a revert (rate limits, nonce or fee
    /// complaints, "header not found", ...). Usually transient.
    #[error("ethereum node rejected the request (code {code}): {message}")]
    Rejected {
        /// The JSON-RPC error code.
        code: i64,
        /// The node's message.
        message: String,
    },
    /// Executing the call would revert (seen while estimating gas or in an `eth_call`).
    #[error("the contract call would revert: {0}")]
    WouldRevert(String),
    /// A contract call returned data that does not fit the ABI (for example, no data at all
    /// because the address holds no contract).
    #[error("unexpected answer from contract {contract}: {message}")]
    Contract {
        /// The contract called.
        contract: Address,
        /// What went wrong.
        message: String,
    },
    /// The signing key is not a 32-byte hex private key. The key itself is never included.
    #[error("invalid signing key: expected a 32-byte hex private key")]
    InvalidKey,
    /// Signing a transaction failed.
    #[error("signing the transaction failed: {0}")]
    Signing(String),
    /// The RPC endpoint serves another chain than the configured one.
    #[error("the ethereum rpc serves chain {actual}, but {expected} is configured")]
    WrongChain {
        /// The configured chain.
        expected: ChainId,
        /// The chain the endpoint reports.
        actual: ChainId,
    },
    /// A dev-only operation was asked to run against a chain that is not a local dev chain.
    #[error(
        "refusing to modify chain {0}: only local dev chains (eip155:1337, eip155:31337) are allowed"
    )]
    NotDevChain(ChainId),
    /// No contract code at the configured contract address.
    #[error("no contract code at {0} on this chain")]
    NoContractCode(Address),
    /// The address already holds code that is not the anchor contract.
    #[error(
        "address {0} already holds code that is not this service's anchor contract \
         (a stale build? restart the dev chain)"
    )]
    UnexpectedContractCode(Address),
    /// The wallet may not call `anchorDagCbor` on the contract.
    #[error(
        "wallet {wallet} is not allowed to anchor on contract {contract}: \
         ask the owner to call addCas({wallet})"
    )]
    NotAllowed {
        /// The service's wallet.
        wallet: Address,
        /// The anchor contract.
        contract: Address,
    },
    /// The wallet cannot pay for the transaction at the offered fees.
    #[error(
        "wallet {wallet} holds {balance} wei, but an anchor transaction may cost up to {needed} wei \
         (gas limit × max fee per gas): fund the wallet"
    )]
    InsufficientFunds {
        /// The service's wallet.
        wallet: Address,
        /// Its balance.
        balance: U256,
        /// The most the transaction may cost.
        needed: U256,
    },
    /// The transaction was mined but reverted.
    #[error("transaction {tx_hash} reverted in block {block_number}")]
    Reverted {
        /// The transaction hash.
        tx_hash: B256,
        /// The block that includes it.
        block_number: u64,
    },
    /// The attempt did not finish in time. If the transaction was already signed, its hash
    /// is given: it may still be mined later.
    #[error("timed out after {after:?}{}", tx_hash.map(|h| format!(" waiting for transaction {h}")).unwrap_or_default())]
    Timeout {
        /// The attempt's transaction, if it got as far as signing.
        tx_hash: Option<B256>,
        /// The attempt's time limit.
        after: Duration,
    },
}

impl ChainError {
    /// Whether the same operation may succeed if tried again later: RPC transport failures,
    /// node-side rejections and timeouts are; reverts, permission problems, wrong chains and
    /// bad configuration are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ChainError::Rpc(_)
            | ChainError::Rejected { .. }
            | ChainError::Timeout { .. }
            | ChainError::InsufficientFunds { .. } => true,
            ChainError::InvalidUrl(_)
            | ChainError::WouldRevert(_)
            | ChainError::Contract { .. }
            | ChainError::InvalidKey
            | ChainError::Signing(_)
            | ChainError::WrongChain { .. }
            | ChainError::NotDevChain(_)
            | ChainError::NoContractCode(_)
            | ChainError::UnexpectedContractCode(_)
            | ChainError::NotAllowed { .. }
            | ChainError::Reverted { .. } => false,
        }
    }
}

/// Why a node refused a transaction sent with `eth_sendRawTransaction`, from its message
/// (geth, anvil, erigon, nethermind and besu wordings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The nonce is used already: an earlier transaction of the wallet was mined with it.
    NonceTooLow,
    /// Another transaction with this nonce is pending and this one does not pay enough more.
    ReplacementUnderpriced,
    /// The fees are below what the node accepts now (e.g. the max fee is below the base fee).
    FeeTooLow,
    /// The wallet cannot pay gas limit × max fee.
    InsufficientFunds,
}

impl ChainError {
    /// Why a node refused a transaction, if this is such a refusal.
    pub fn rejection(&self) -> Option<Rejection> {
        let ChainError::Rejected { message, .. } = self else {
            return None;
        };
        let m = message.to_ascii_lowercase();
        let any = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
        if any(&[
            "nonce too low",
            "nonce is too low",
            "nonce has already been used",
            "oldnonce",
            "nonce already used",
        ]) {
            Some(Rejection::NonceTooLow)
        } else if any(&[
            "replacement transaction underpriced",
            "replacement underpriced",
            "replacementunderpriced",
            "replacement fee too low",
        ]) {
            Some(Rejection::ReplacementUnderpriced)
        } else if any(&[
            "insufficient funds",
            "insufficientfunds",
            "insufficient balance",
        ]) {
            Some(Rejection::InsufficientFunds)
        } else if any(&[
            "less than block base fee",
            "underpriced",
            "fee cap too low",
            "feecaptoolow",
            "gas price too low",
            "max fee per gas less than",
        ]) {
            Some(Rejection::FeeTooLow)
        } else {
            None
        }
    }
}

/// JSON-RPC error code that geth, anvil and most clients use for "execution reverted".
const EXECUTION_REVERTED: i64 = 3;

/// Classify an alloy transport error.
pub(crate) fn from_transport(e: TransportError) -> ChainError {
    match e {
        RpcError::ErrorResp(payload) => {
            let message = payload.message.to_string();
            if payload.code == EXECUTION_REVERTED || message.to_ascii_lowercase().contains("revert")
            {
                ChainError::WouldRevert(message)
            } else {
                ChainError::Rejected {
                    code: payload.code,
                    message,
                }
            }
        }
        other => ChainError::Rpc(other.to_string()),
    }
}

/// Classify an error from a typed contract call.
pub(crate) fn from_contract(contract: Address, e: alloy::contract::Error) -> ChainError {
    match e {
        alloy::contract::Error::TransportError(e) => from_transport(e),
        other => ChainError::Contract {
            contract,
            message: other.to_string(),
        },
    }
}

/// True for "the node already has this exact transaction" answers to a re-broadcast.
pub(crate) fn is_already_known(e: &TransportError) -> bool {
    match e {
        RpcError::ErrorResp(p) => {
            let m = p.message.to_ascii_lowercase();
            m.contains("already known")
                || m.contains("known transaction")
                || m.contains("already imported")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(message: &str) -> ChainError {
        ChainError::Rejected {
            code: -32003,
            message: message.to_owned(),
        }
    }

    #[test]
    fn node_refusals_are_classified() {
        for (message, expected) in [
            ("nonce too low", Some(Rejection::NonceTooLow)),
            (
                "nonce too low: next nonce 5, tx nonce 4",
                Some(Rejection::NonceTooLow),
            ),
            ("OldNonce", Some(Rejection::NonceTooLow)),
            (
                "replacement transaction underpriced",
                Some(Rejection::ReplacementUnderpriced),
            ),
            (
                "ReplacementUnderpriced",
                Some(Rejection::ReplacementUnderpriced),
            ),
            (
                "max fee per gas less than block base fee",
                Some(Rejection::FeeTooLow),
            ),
            ("transaction underpriced", Some(Rejection::FeeTooLow)),
            (
                "Insufficient funds for gas * price + value",
                Some(Rejection::InsufficientFunds),
            ),
            ("header not found", None),
        ] {
            assert_eq!(rejected(message).rejection(), expected, "{message}");
        }
        assert_eq!(ChainError::Rpc("nonce too low".into()).rejection(), None);
    }

    #[test]
    fn an_unfunded_wallet_is_explained_and_retryable() {
        let err = ChainError::InsufficientFunds {
            wallet: Address::ZERO,
            balance: U256::from(5u64),
            needed: U256::from(1_000u64),
        };
        assert!(err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains("holds 5 wei") && text.contains("1000 wei") && text.contains("fund"),
            "{text}"
        );
    }
}
