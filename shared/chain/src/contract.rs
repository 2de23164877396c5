//! The anchor contract: its address, ABI bindings and bytecode, and installing it on a local
//! dev chain.

use alloy::primitives::{Address, B256, Bytes, U256, address};
use alloy::providers::Provider;

use crate::error::from_transport;
use crate::{ChainError, ChainId, connect_root};

/// The official anchor contract (`CeramicAnchorServiceV2`), the same on every chain.
/// js-ceramic rejects anchors whose transaction is sent anywhere else (protocol §5.4).
pub const ANCHOR_CONTRACT_ADDRESS: Address = address!("0x231055A0852D67C7107Ad0d0DFeab60278fE6AdC");

/// Storage slot of the contract's owner (see `contracts/CeramicAnchor.sol`).
pub const OWNER_SLOT: U256 = U256::ZERO;

/// Storage slot of the contract's allowlist mapping; the flag of address `a` lives at
/// `keccak256(abi.encode(a, 1))`.
pub const ALLOWLIST_SLOT: U256 = U256::from_limbs([1, 0, 0, 0]);

/// Chain ids this crate treats as local dev chains (ganache/anvil conventions).
pub const DEV_CHAIN_IDS: [u64; 2] = [1337, 31337];

alloy::sol!(
    /// Bindings for the service's anchor contract (`contracts/CeramicAnchor.sol`), generated
    /// from the committed build output `contracts/build/CeramicAnchor.json` (rebuild it with
    /// `scripts/build-contract`). The interface matches the deployed `CeramicAnchorServiceV2`:
    /// `anchorDagCbor(bytes32)` (selector `0x97ad09eb`), `DidAnchor(address indexed, bytes32)`,
    /// `addCas`, `removeCas`, `isServiceAllowed`, `owner`, `transferOwnership`.
    /// `CeramicAnchor::BYTECODE` is the creation code, `CeramicAnchor::DEPLOYED_BYTECODE` the
    /// runtime code.
    #[sol(rpc)]
    #[derive(Debug)]
    CeramicAnchor,
    "../../contracts/build/CeramicAnchor.json"
);

/// Whether `chain` is a local dev chain (1337 or 31337), the only chains
/// [`install_contract_for_dev`] will modify.
pub fn is_dev_chain(chain: ChainId) -> bool {
    DEV_CHAIN_IDS.contains(&chain.0)
}

/// `Ok` for local dev chains, [`ChainError::NotDevChain`] otherwise.
pub fn ensure_dev_chain(chain: ChainId) -> Result<(), ChainError> {
    if is_dev_chain(chain) {
        Ok(())
    } else {
        Err(ChainError::NotDevChain(chain))
    }
}

/// What [`install_contract_for_dev`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The code was placed and the owner set.
    Placed,
    /// The anchor contract was already there; nothing was changed (its owner may differ
    /// from the one asked for).
    AlreadyPresent,
}

/// Place the anchor contract's runtime code at `address` on a local anvil chain, owned by
/// `owner`, without a deployment transaction (`anvil_setCode` + `anvil_setStorageAt` of
/// slot 0, since no constructor runs). Used to put the contract at the official address,
/// which js-ceramic requires.
///
/// - No code at `address`: installs it.
/// - Already our code: leaves it as it is (idempotent), owner included.
/// - Other code: [`ChainError::UnexpectedContractCode`].
///
/// Refuses ([`ChainError::NotDevChain`]) unless the endpoint reports chain id 1337 or
/// 31337, so it can never touch a public chain.
pub async fn install_contract_for_dev(
    rpc_url: &str,
    address: Address,
    owner: Address,
) -> Result<Installed, ChainError> {
    let provider = connect_root(rpc_url)?;
    let chain = ChainId(provider.get_chain_id().await.map_err(from_transport)?);
    ensure_dev_chain(chain)?;

    let code = provider
        .get_code_at(address)
        .await
        .map_err(from_transport)?;
    let runtime = &CeramicAnchor::DEPLOYED_BYTECODE;
    if code == *runtime {
        tracing::debug!(%address, "anchor contract already installed");
        return Ok(Installed::AlreadyPresent);
    }
    if !code.is_empty() {
        return Err(ChainError::UnexpectedContractCode(address));
    }

    let _: serde_json::Value = provider
        .raw_request("anvil_setCode".into(), (address, runtime.clone()))
        .await
        .map_err(from_transport)?;
    let _: serde_json::Value = provider
        .raw_request(
            "anvil_setStorageAt".into(),
            (address, OWNER_SLOT, B256::from(owner.into_word())),
        )
        .await
        .map_err(from_transport)?;
    tracing::info!(%address, %owner, %chain, "installed the anchor contract on a dev chain");
    Ok(Installed::Placed)
}

/// The runtime code expected at an installed anchor contract.
pub fn runtime_bytecode() -> Bytes {
    CeramicAnchor::DEPLOYED_BYTECODE.clone()
}
