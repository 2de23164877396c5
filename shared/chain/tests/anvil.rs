//! Tests against the anvil that `scripts/test` starts (`ETH_RPC_URL`). Other tests share the
//! chain, so every test uses fresh random wallets (funded with `anvil_setBalance`) and, where
//! it can, its own contract address; the official address is only ever installed
//! idempotently.

use std::time::Duration;

use alloy::consensus::Transaction as _;
use alloy::eips::Typed2718 as _;
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, U256, b256};
use alloy::providers::{Provider, ProviderBuilder, RootProvider};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent};
use cas_chain::{
    ANCHOR_CONTRACT_ADDRESS, AnchorChain, AnchorTx, AnchorerConfig, CeramicAnchor, ChainError,
    ChainId, EvmAnchorer, Installed, Payload, install_contract_for_dev,
};
use secrecy::SecretString;

/// anvil's first dev account, the owner the tests give the contract at the official address.
const DEV_OWNER: Address =
    alloy::primitives::address!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");

const DID_ANCHOR_TOPIC: B256 =
    b256!("0x37f9254ff1973d24d609016d6bb0aef8e6de91808811a546fad8eaa0e481d9d9");

fn rpc_url() -> String {
    std::env::var("ETH_RPC_URL")
        .expect("ETH_RPC_URL must point at a running anvil (scripts/test starts one)")
}

fn expected_chain() -> ChainId {
    ChainId(
        std::env::var("CAS_TEST_CHAIN_ID")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1337),
    )
}

fn provider() -> RootProvider {
    RootProvider::new_http(rpc_url().parse().unwrap())
}

async fn set_balance(p: &RootProvider, who: Address) {
    let wei = U256::from(10u64).pow(U256::from(20u64)); // 100 ETH
    let _: serde_json::Value = p
        .raw_request("anvil_setBalance".into(), (who, wei))
        .await
        .unwrap();
}

/// A fresh wallet with 100 ETH.
async fn funded_wallet(p: &RootProvider) -> PrivateKeySigner {
    let signer = PrivateKeySigner::random();
    set_balance(p, signer.address()).await;
    signer
}

fn secret(signer: &PrivateKeySigner) -> SecretString {
    SecretString::from(alloy::hex::encode_prefixed(signer.to_bytes()))
}

fn config(signer: &PrivateKeySigner) -> AnchorerConfig {
    let mut c = AnchorerConfig::new(rpc_url(), secret(signer));
    c.expected_chain_id = Some(expected_chain());
    c.poll_interval = Duration::from_millis(50);
    c
}

/// One anchor through the node's steps, without a journal (the transaction manager's job;
/// here only the node's answers are under test): latest nonce, fees, sign, send, then the
/// receipt, the confirmations and the block, as the manager reads them.
async fn anchor_once(anchorer: &EvmAnchorer, root: [u8; 32]) -> Result<AnchorTx, ChainError> {
    let nonce = anchorer.nonce_at(None).await?;
    let fees = anchorer.suggest_fees().await?;
    let signed = anchorer
        .sign(Payload::Anchor { root_digest: root }, nonce, fees)
        .await?;
    anchorer.broadcast(&signed).await?;
    // Sending it again is harmless; once it is mined, anvil answers that with a refusal
    // ("transaction already imported", or "nonce too low"), which is why the transaction
    // manager never acts on the answer to a re-broadcast.
    let _ = anchorer.broadcast(&signed).await;
    for _ in 0..600 {
        if let Some(inclusion) = anchorer.receipt(signed.tx_hash).await? {
            let head = anchorer.head().await?;
            if head + 1 >= inclusion.block_number + anchorer.confirmations() {
                if !inclusion.success {
                    return Err(ChainError::Reverted {
                        tx_hash: signed.tx_hash,
                        block_number: inclusion.block_number,
                    });
                }
                let block = anchorer
                    .block(inclusion.block_number)
                    .await?
                    .expect("the receipt's block");
                assert_eq!(block.hash, inclusion.block_hash);
                return Ok(AnchorTx {
                    tx_hash: signed.tx_hash.0,
                    block_number: inclusion.block_number,
                    block_timestamp: block.timestamp,
                    gas_used: inclusion.gas_used,
                    effective_gas_price: inclusion.effective_gas_price,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("transaction {} not confirmed in 30 s", signed.tx_hash);
}

/// Send `input` to `contract` as its current owner, whoever that is (anvil impersonation,
/// so no key is needed and anvil assigns the nonce).
/// Owner transactions of tests running in parallel: anvil gives concurrent sends from one
/// impersonated account the same nonce, so they take turns.
static OWNER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn as_owner(p: &RootProvider, contract: Address, input: Vec<u8>) {
    let _turn = OWNER_TURN.lock().await;
    let owner = CeramicAnchor::new(contract, p)
        .owner()
        .call()
        .await
        .unwrap();
    let _: serde_json::Value = p
        .raw_request("anvil_impersonateAccount".into(), (owner,))
        .await
        .unwrap();
    if p.get_balance(owner).await.unwrap() < U256::from(10u64).pow(U256::from(18u64)) {
        set_balance(p, owner).await;
    }
    let tx = TransactionRequest::default()
        .with_from(owner)
        .with_to(contract)
        .with_input(input);
    let receipt = p
        .send_transaction(tx)
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status(), "owner call reverted");
}

async fn ensure_official_contract() {
    install_contract_for_dev(&rpc_url(), ANCHOR_CONTRACT_ADDRESS, DEV_OWNER)
        .await
        .unwrap();
}

fn random_root() -> [u8; 32] {
    PrivateKeySigner::random().to_bytes().0
}

#[tokio::test]
async fn install_places_code_and_owner_and_is_idempotent() {
    let p = provider();
    let at = PrivateKeySigner::random().address();
    let owner = PrivateKeySigner::random().address();

    let first = install_contract_for_dev(&rpc_url(), at, owner)
        .await
        .unwrap();
    assert_eq!(first, Installed::Placed);
    assert_eq!(
        p.get_code_at(at).await.unwrap(),
        CeramicAnchor::DEPLOYED_BYTECODE
    );
    let slot0 = p.get_storage_at(at, U256::ZERO).await.unwrap();
    assert_eq!(B256::from(slot0), owner.into_word());
    let contract = CeramicAnchor::new(at, &p);
    assert_eq!(contract.owner().call().await.unwrap(), owner);
    assert!(!contract.isServiceAllowed(owner).call().await.unwrap());

    // Again, even with another owner: nothing changes.
    let other = PrivateKeySigner::random().address();
    let second = install_contract_for_dev(&rpc_url(), at, other)
        .await
        .unwrap();
    assert_eq!(second, Installed::AlreadyPresent);
    assert_eq!(contract.owner().call().await.unwrap(), owner);

    // The official address (shared with other tests): placed once, then left alone.
    ensure_official_contract().await;
    assert_eq!(
        install_contract_for_dev(&rpc_url(), ANCHOR_CONTRACT_ADDRESS, DEV_OWNER)
            .await
            .unwrap(),
        Installed::AlreadyPresent
    );
    assert_eq!(
        p.get_code_at(ANCHOR_CONTRACT_ADDRESS).await.unwrap(),
        CeramicAnchor::DEPLOYED_BYTECODE
    );
}

#[tokio::test]
async fn install_refuses_an_address_with_other_code() {
    let p = provider();
    let at = PrivateKeySigner::random().address();
    let _: serde_json::Value = p
        .raw_request(
            "anvil_setCode".into(),
            (at, Bytes::from_static(&[0x60, 0x00, 0x60, 0x00, 0xf3])),
        )
        .await
        .unwrap();
    let err = install_contract_for_dev(&rpc_url(), at, DEV_OWNER)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChainError::UnexpectedContractCode(a) if a == at),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_wallet_must_be_allowed_and_then_anchors_at_the_official_address() {
    ensure_official_contract().await;
    let p = provider();
    let signer = funded_wallet(&p).await;
    let wallet = signer.address();

    // Not on the allowlist yet: a clear error at connect.
    let err = EvmAnchorer::connect(config(&signer)).await.unwrap_err();
    assert!(matches!(err, ChainError::NotAllowed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "wallet {wallet} is not allowed to anchor on contract {ANCHOR_CONTRACT_ADDRESS}"
        )) && msg.contains("addCas"),
        "{msg}"
    );
    assert!(!err.is_retryable());

    // The owner adds it.
    as_owner(
        &p,
        ANCHOR_CONTRACT_ADDRESS,
        CeramicAnchor::addCasCall { _service: wallet }.abi_encode(),
    )
    .await;

    let anchorer = EvmAnchorer::connect(config(&signer)).await.unwrap();
    assert_eq!(anchorer.chain_id(), expected_chain());
    assert_eq!(anchorer.wallet(), wallet);
    assert_eq!(anchorer.contract(), ANCHOR_CONTRACT_ADDRESS);
    let before = anchorer.balance().await.unwrap();
    assert!(before > U256::ZERO);
    let debug = format!("{anchorer:?}");
    let key_hex = alloy::hex::encode(signer.to_bytes());
    assert!(!debug.contains(&key_hex), "{debug}");

    let root = random_root();
    let tx = anchor_once(&anchorer, root).await.unwrap();
    println!(
        "anchorDagCbor by an allow-listed wallet: {} gas",
        tx.gas_used
    );
    assert!(
        (24_000..=28_000).contains(&tx.gas_used),
        "gas {}",
        tx.gas_used
    );
    assert!(anchorer.balance().await.unwrap() < before);

    // What nodes validate: the transaction itself (§5.4).
    let hash = B256::from(tx.tx_hash);
    // anvil may still answer from its pool for a moment after the block is mined (seen while
    // other tests mine blocks concurrently), so read until the block number shows.
    let mut onchain = p.get_transaction_by_hash(hash).await.unwrap().unwrap();
    for _ in 0..50 {
        if onchain.block_number.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        onchain = p.get_transaction_by_hash(hash).await.unwrap().unwrap();
    }
    assert_eq!(onchain.inner.to(), Some(ANCHOR_CONTRACT_ADDRESS));
    let input = onchain.inner.input();
    assert_eq!(input.len(), 36);
    assert_eq!(input[..4], [0x97, 0xad, 0x09, 0xeb]);
    assert_eq!(input[4..], root);
    assert_eq!(onchain.block_number, Some(tx.block_number));
    assert_eq!(onchain.inner.signer(), wallet);
    assert_eq!(onchain.inner.ty(), 2, "EIP-1559");

    // What the anchor listener reads: the DidAnchor log.
    let receipt = p.get_transaction_receipt(hash).await.unwrap().unwrap();
    assert_eq!(receipt.gas_used, tx.gas_used);
    assert_eq!(receipt.effective_gas_price, tx.effective_gas_price);
    let logs = receipt.logs();
    assert_eq!(logs.len(), 1);
    let log = &logs[0];
    assert_eq!(log.address(), ANCHOR_CONTRACT_ADDRESS);
    assert_eq!(log.topics()[0], DID_ANCHOR_TOPIC);
    let event = CeramicAnchor::DidAnchor::decode_log_data(log.data()).unwrap();
    assert_eq!(event._service, wallet);
    assert_eq!(event._root, B256::from(root));

    let block = p
        .get_block_by_number(tx.block_number.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(block.header.timestamp, tx.block_timestamp);

    // The wallet removes itself; it can no longer anchor, and that is not retryable.
    let own = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer.clone()))
        .connect_http(rpc_url().parse().unwrap());
    let removed = CeramicAnchor::new(ANCHOR_CONTRACT_ADDRESS, &own)
        .removeCas(wallet)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(removed.status());
    assert!(!anchorer.is_allowed().await.unwrap());
    // Estimating the call reverts; the anchorer says why.
    let err = anchor_once(&anchorer, random_root()).await.unwrap_err();
    assert!(matches!(err, ChainError::NotAllowed { .. }), "{err}");
    assert!(err.to_string().contains("addCas"), "{err}");
    assert!(!err.is_retryable());
    let err = EvmAnchorer::connect(config(&signer)).await.unwrap_err();
    assert!(matches!(err, ChainError::NotAllowed { .. }), "{err}");
}

#[tokio::test]
async fn the_owner_anchors_on_its_own_contract_and_waits_for_confirmations() {
    let p = provider();
    let owner = funded_wallet(&p).await;
    let at = PrivateKeySigner::random().address();
    install_contract_for_dev(&rpc_url(), at, owner.address())
        .await
        .unwrap();

    let mut c = config(&owner);
    c.contract = at;
    c.confirmations = 3;
    let anchorer = EvmAnchorer::connect(c).await.unwrap();

    // anvil mines only on demand: keep mining empty blocks while we wait.
    let miner = tokio::spawn(async move {
        let p = provider();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _: serde_json::Value = p.raw_request("evm_mine".into(), ()).await.unwrap();
        }
    });
    let root = random_root();
    let tx = anchor_once(&anchorer, root).await;
    miner.abort();
    let tx = tx.unwrap();
    println!("anchorDagCbor by the owner: {} gas", tx.gas_used);
    assert!(
        p.get_block_number().await.unwrap() >= tx.block_number + 2,
        "returned before 3 confirmations"
    );
    let onchain = p
        .get_transaction_by_hash(B256::from(tx.tx_hash))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(onchain.inner.to(), Some(at));
}

#[tokio::test]
async fn a_wrong_expected_chain_id_fails_at_connect() {
    let mut c = config(&PrivateKeySigner::random());
    c.expected_chain_id = Some(ChainId(1));
    let err = EvmAnchorer::connect(c).await.unwrap_err();
    match &err {
        ChainError::WrongChain { expected, actual } => {
            assert_eq!(*expected, ChainId(1));
            assert_eq!(*actual, expected_chain());
        }
        other => panic!("expected WrongChain, got {other}"),
    }
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn no_code_at_the_contract_address_fails_at_connect() {
    let mut c = config(&PrivateKeySigner::random());
    let empty = PrivateKeySigner::random().address();
    c.contract = empty;
    let err = EvmAnchorer::connect(c).await.unwrap_err();
    assert!(
        matches!(err, ChainError::NoContractCode(a) if a == empty),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_node_is_retryable() {
    let mut c = config(&PrivateKeySigner::random());
    c.rpc_url = "http://127.0.0.1:1".into();
    let err = EvmAnchorer::connect(c).await.unwrap_err();
    assert!(matches!(err, ChainError::Rpc(_)), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn install_reports_an_unreachable_node() {
    // (The refusal of public chain ids is tested on the pure `ensure_dev_chain`.)
    let err = install_contract_for_dev("http://127.0.0.1:1", ANCHOR_CONTRACT_ADDRESS, DEV_OWNER)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

/// What the transaction manager reads to prove which transaction used a nonce, from a real
/// node: the wallet's transaction count after a given block, and the wallet's transactions
/// in a block. Fillers (transfers of nothing to the wallet itself) are signed and mined too.
#[tokio::test]
async fn the_node_shows_which_transaction_used_each_nonce() {
    let p = provider();
    let signer = funded_wallet(&p).await;
    let owner_contract = PrivateKeySigner::random().address();
    install_contract_for_dev(&rpc_url(), owner_contract, signer.address())
        .await
        .unwrap();
    let mut c = config(&signer);
    c.contract = owner_contract;
    let anchorer = EvmAnchorer::connect(c).await.unwrap();
    let before = anchorer.head().await.unwrap();
    assert_eq!(anchorer.nonce_at(None).await.unwrap(), 0);

    let mut sent = Vec::new();
    for nonce in 0..2 {
        let fees = anchorer.suggest_fees().await.unwrap();
        let filler = anchorer.sign(Payload::Filler, nonce, fees).await.unwrap();
        assert_eq!(filler.root_digest, [0; 32]);
        assert_eq!(filler.gas_limit, 21_000);
        anchorer.broadcast(&filler).await.unwrap();
        let mut inclusion = None;
        for _ in 0..200 {
            inclusion = anchorer.receipt(filler.tx_hash).await.unwrap();
            if inclusion.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let inclusion = inclusion.expect("mined");
        assert!(inclusion.success);
        sent.push((filler.tx_hash, inclusion.block_number));
    }
    assert_eq!(anchorer.nonce_at(None).await.unwrap(), 2);
    assert_eq!(anchorer.nonce_at(Some(before)).await.unwrap(), 0);
    for (nonce, (hash, block_number)) in sent.iter().enumerate() {
        assert_eq!(
            anchorer.nonce_at(Some(*block_number)).await.unwrap(),
            nonce as u64 + 1
        );
        assert_eq!(
            anchorer.nonce_at(Some(block_number - 1)).await.unwrap(),
            nonce as u64
        );
        let block = anchorer.block(*block_number).await.unwrap().expect("block");
        assert_eq!(block.number, *block_number);
        let ours: Vec<_> = block
            .wallet_txs
            .iter()
            .map(|t| (t.nonce, t.tx_hash))
            .collect();
        assert_eq!(
            ours,
            vec![(nonce as u64, *hash)],
            "only the wallet's transactions"
        );
    }
    assert!(
        anchorer
            .block(anchorer.head().await.unwrap() + 1000)
            .await
            .unwrap()
            .is_none()
    );
    // A nonce that is used: the node refuses it, and says why.
    let fees = anchorer.suggest_fees().await.unwrap();
    let stale = anchorer.sign(Payload::Filler, 0, fees).await.unwrap();
    let err = anchorer.broadcast(&stale).await.unwrap_err();
    assert_eq!(
        err.rejection(),
        Some(cas_chain::Rejection::NonceTooLow),
        "{err}"
    );
}
